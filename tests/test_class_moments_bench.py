"""benchmarks/class_moments.py: lordkit's class-moment term against the reference formulation on the
same inputs (values and gradients agree), and its options."""

import pytest
import torch

from conftest import load_benchmark
from lordkit.losses import class_moment_penalty


def test_the_reference_and_lordkit_give_the_same_value_and_gradient():
    bench = load_benchmark("class_moments")
    g = torch.Generator().manual_seed(3)
    table = torch.randn(600, 6, generator=g)
    class_ids = torch.randint(0, 40, (600,), generator=g)  # many classes: most rows are of classes outside the batch
    idx, reference = torch.randperm(600, generator=g)[:24], torch.randperm(600, generator=g)[:400]
    live = table[idx] * 1.5
    _, v_ref, g_ref = bench.one_call(bench.reference_penalty, live, idx, table, class_ids, reference)
    _, v_new, g_new = bench.one_call(class_moment_penalty, live, idx, table, class_ids, reference)
    assert v_ref > 0 and torch.allclose(v_ref, v_new, rtol=1e-5) and torch.allclose(g_ref, g_new, rtol=1e-4, atol=1e-7)


def test_a_small_run_gives_a_row_per_shape(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORDKIT_RESULTS_DIR", str(tmp_path))
    figures = load_benchmark("class_moments").main(["--shapes", "4x3x8,6x50x16", "--rows", "500", "--sample", "300",
                                                    "--repeats", "1", "--threads", "1"])
    assert [(r["content_dim"], r["classes"], r["batch"]) for r in figures["rows"]] == [(4, 3, 8), (6, 50, 16)]
    for r in figures["rows"]:
        assert r["sample"] == 300 and r["reference_ms"] > 0 and r["lordkit_ms"] > 0 and r["value_rel_diff"] < 1e-4
    assert "| 6 | 50 | 16 |" in capsys.readouterr().out
    assert not (tmp_path / "class_moments.jsonl").exists()  # main() called from Python records nothing


@pytest.mark.parametrize("shapes", ["8x10", "8x0x16", "axbxc"])
def test_bad_shapes_are_one_error(shapes, capsys):
    with pytest.raises(SystemExit) as e:
        load_benchmark("class_moments").main(["--shapes", shapes])
    assert e.value.code == 2 and "--shapes wants DIMxCLASSESxBATCH" in capsys.readouterr().err


def test_a_batch_larger_than_the_table_is_one_error(capsys):
    with pytest.raises(SystemExit) as e:
        load_benchmark("class_moments").main(["--shapes", "4x2x50", "--rows", "20"])
    assert e.value.code == 2 and "a batch cannot be larger than the table" in capsys.readouterr().err


def test_a_table_where_no_class_has_two_codes_times_a_zero_term(tmp_path, monkeypatch):
    monkeypatch.setenv("LORDKIT_RESULTS_DIR", str(tmp_path))
    figures = load_benchmark("class_moments").main(["--shapes", "4x2x2", "--rows", "3", "--sample", "1",
                                                    "--repeats", "1", "--threads", "1"])
    assert figures["rows"][0]["value_rel_diff"] == 0 and figures["rows"][0]["lordkit_ms"] > 0
