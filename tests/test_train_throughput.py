"""benchmarks/train_throughput.py: the interleaving conductor (rows take turns, one at a time, windows
timed per row, errors surface) and a tiny end-to-end run of every row; no timing is asserted."""

import json
import threading

import pytest
import torch

from conftest import load_benchmark

@pytest.fixture(scope="module")
def bench():
    return load_benchmark("train_throughput")


def test_rows_take_turns_one_at_a_time(bench):
    log: list[tuple[str, int]] = []
    running = []
    lock = threading.Lock()

    def row(name: str, n_steps: int):
        def loop(on_step):
            for step in range(1, n_steps + 1):
                with lock:
                    running.append(name)
                    assert len(running) == 1, running  # never two rows at once
                log.append((name, step))
                with lock:
                    running.remove(name)
                on_step(step)
            return f"{name} done"
        return loop

    got = bench.Interleaved(torch.device("cpu"), batch_size=4, warmup=2, window=3).run(
        {"a": row("a", 11), "b": row("b", 8)})
    assert got["a"]["result"] == "a done" and got["b"]["result"] == "b done"
    # a: warm-up to step 2, windows ending at 5, 8, 11 -> 3 timed; b: 5, 8 -> 2 timed.
    assert got["a"]["windows"] == 3 and got["b"]["windows"] == 2
    assert got["a"]["img_per_sec"] > 0 and got["b"]["img_per_sec"] > 0
    # Each row's steps in order; the rows alternate in blocks of the window after the warm-up.
    assert [s for n, s in log if n == "a"] == list(range(1, 12))
    blocks = [n for i, (n, _) in enumerate(log) if i == 0 or log[i - 1][0] != n]
    assert blocks[:4] == ["a", "b", "a", "b"]


def test_a_failing_row_is_raised_after_the_others_finish(bench):
    def good(on_step):
        for step in range(1, 7):
            on_step(step)
        return "ok"

    def bad(on_step):
        on_step(1)
        on_step(2)
        raise RuntimeError("row broke")

    with pytest.raises(RuntimeError, match="row broke"):
        bench.Interleaved(torch.device("cpu"), batch_size=1, warmup=2, window=2).run({"good": good, "bad": bad})


def test_tiny_run_of_both_stages_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "tt.json"
    tiny = ["model.content_dim=8", "model.class_dim=8", "model.adain_dim=16", "model.n_adain_layers=3",
            "model.gen_last_dim=8", "model.enc_conv_dims=[8,8,8,8,8]", "model.enc_fc_dim=16"]
    args = ["--img-size", "32", "--batch-size", "4", "--steps", "4", "--warmup", "2", "--device", "cpu",
            "--out", str(out)]
    for s in tiny:
        args += ["--set", s]
    got = bench.main(args)
    saved = json.loads(out.read_text())
    assert set(saved["stages"]) == {"latent", "amortized"} == set(got["stages"])
    for row in saved["stages"].values():
        assert row["timed_windows"] == 2
        assert row["reference_img_per_sec"] > 0 and row["lordkit_img_per_sec"] > 0
        assert row["reference_loss_last"] > 0 and row["lordkit_loss_last"] > 0
    printed = capsys.readouterr().out
    assert "latent: reference" in printed and "instruction sets:" in printed
    assert isinstance(saved["isa"], list) and saved["cpu"]


@pytest.mark.parametrize("args", [["--stages", "latnet"], ["--warmup", "0"], ["--steps", "1", "--warmup", "2"]])
def test_bad_options_stop_before_any_work(bench, args, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
