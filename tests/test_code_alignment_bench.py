"""benchmarks/code_alignment.py: how far apart the contents of nearest codes of different classes are."""

import numpy as np
import pytest

from conftest import load_benchmark
from lordkit.data.datasets.synthetic import content_factors_of
from lordkit.training import train_latent
from test_training import data, quiet, tiny_cfg  # noqa: F401  (data: a fixture)

GRID = {"x": 3, "y": 2, "scale": 1, "rotation": 1, "hue": 2}


def test_codes_that_are_the_factors_match_and_shuffled_ones_do_not():
    bench = load_benchmark("code_alignment")
    content = np.tile(np.arange(12), 3)
    classes = np.repeat(np.arange(3), 12)
    factors = np.array([content_factors_of(int(c), GRID) for c in content], float)
    exact = bench.nearest_factor_error(factors + classes[:, None] * 1e-3, classes, content, GRID)
    assert set(exact) == {"x", "y", "hue"}  # one-level factors are left out
    assert all(v == 0 for v in exact.values())
    shuffled = factors.copy()
    shuffled[12:24] = shuffled[12:24][np.random.default_rng(0).permutation(12)]
    assert sum(bench.nearest_factor_error(shuffled, classes, content, GRID).values()) > 0.5


def test_blurred_start_codes_of_outlines_agree_across_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("LORDKIT_RESULTS_DIR", str(tmp_path / "results"))
    figures = load_benchmark("code_alignment").main(
        ["--work", str(tmp_path / "w"), "--variants", "outline-class-light", "--blur", "0,0.25"])
    plain, blurred = (r["error"] for r in figures["rows"])
    assert blurred["x"] < plain["x"] / 2 and blurred["y"] < plain["y"] / 2  # 0.53 / 0.56 -> 0.08 / 0.08
    assert not (tmp_path / "results").exists()  # main() called from Python records nothing


def test_trained_codes_and_bad_input(data, tmp_path, capsys):  # noqa: F811
    train_latent(data, tmp_path / "m", tiny_cfg("latent.n_epochs=1"), **quiet())
    bench = load_benchmark("code_alignment")
    rows = bench.main(["--work", str(tmp_path / "w"), "--variants", "", "--trained", f"{tmp_path / 'm'}:{data.path}"])
    (row,) = rows["rows"]
    assert row["codes"] == "trained" and row["error"] and all(np.isfinite(list(row["error"].values())))
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    for args in (["--variants", "", "--trained", f"{tmp_path / 'm'}"],  # no colon
                 ["--variants", "", "--trained", f"{tmp_path / 'none'}:{data.path}"],  # no model
                 ["--variants", "outline-hue", "--blur", "0", "--work", str(tmp_path / "file" / "w")]):  # a file's child
        with pytest.raises(SystemExit) as e:
            bench.main(["--work", str(tmp_path / "w"), *args])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    for args in (["--variants", "nope"], ["--blur", "0,x"], ["--blur", "0.9"]):
        with pytest.raises(SystemExit) as e:
            bench.main(["--work", str(tmp_path / "w"), *args])
        assert e.value.code == 2
