"""benchmarks/real_sets.py end to end on a small sample of scikit-learn's digits: every command runs as a
user would run it, and the row, table and grid come out."""

import json

import numpy as np
import pytest

from conftest import load_benchmark

pytest.importorskip("sklearn")

def test_digits_are_written_as_a_folder_of_class_named_pngs(tmp_path):
    import cv2

    about = load_benchmark("real_sets").write_digits(tmp_path / "d", limit=50, seed=0)
    files = sorted((tmp_path / "d").glob("*/*.png"))
    assert about["n_images"] == len(files) == 50 and {f.parent.name for f in files} <= {str(i) for i in range(10)}
    img = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (8, 8) and img.dtype == np.uint8 and img.max() > 128  # ink scaled to 0..255


def test_a_small_run_writes_its_row_table_and_grid_and_its_unbudgeted_twin(tmp_path):
    out = tmp_path / "out"
    rc = load_benchmark("real_sets").main(["--out", str(out), "--budgets", "40s", "--limit", "80", "--threads", "1",
                             "--set", "latent.batch_size=8", "--tag", "b8", "--twin"])
    assert rc == 0, (out / "digits-40s-b8.log").read_text() + (out / "digits-40s-b8-twin.log").read_text()
    row, twin = json.loads((out / "results.json").read_text())["rows"]
    assert row["overrides"] == ["latent.batch_size=8"] and row["set_info"]["n_images"] == 80
    assert row["stage1"]["epochs"] >= 1 and row["stage1"]["steps"] >= row["stage1"]["epochs"]
    assert 0 <= row["leakage"]["accuracy"] <= 1 and row["leakage"]["n_folds"] >= 2
    assert 0 <= row["class_check"]["transferred_as_target_class"] <= 1
    assert (out / "digits-40s-b8.png").stat().st_size > 0
    assert "| digits latent.batch_size=8 | 40s |" in (out / "results.md").read_text()
    # the twin: same settings, no budget, the epochs nearest to the steps each budgeted stage trained
    assert not row["unbudgeted_twin"] and twin["unbudgeted_twin"] and twin["overrides"] == row["overrides"]
    for stage in ("stage1", "stage2"):
        per_epoch = row[stage]["steps_per_epoch"]
        assert per_epoch >= 1 and twin[stage]["steps_per_epoch"] is None and twin[stage]["over_budget"] is None
        assert twin[stage]["steps"] == twin[stage]["epochs"] * per_epoch
        assert abs(twin[stage]["steps"] - row[stage]["steps"]) <= per_epoch / 2
    assert "| digits latent.batch_size=8 | no budget, its epochs |" in (out / "results.md").read_text()
    assert (out / "digits-40s-b8-twin.png").stat().st_size > 0


def test_the_budget_cell_names_a_stage_share_other_than_the_default_and_a_twin():
    rs = load_benchmark("real_sets")
    assert rs.budget_cell({"budget": "15m", "stage1_share": rs.STAGE1_SHARE}) == "15m"
    assert rs.budget_cell({"budget": "15m", "stage1_share": 0.5}) == "15m (50% to stage 1)"
    assert rs.budget_cell({"budget": "15m", "stage1_share": None, "unbudgeted_twin": True}) == "no budget, its epochs"


def test_a_stage_share_outside_0_to_1_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_benchmark("real_sets").main(["--out", str(tmp_path), "--stage1-share", "1"])
    assert e.value.code == 2 and "--stage1-share must be between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [[], ["--cpu-bf16"]])
def test_cpu_bf16_reaches_both_training_commands_and_nothing_else(tmp_path, monkeypatch, flag):
    rs = load_benchmark("real_sets")
    calls = []

    def fake(base, args, env, log):  # every command as the benchmark would run it; evaluate ends the run
        calls.append(args)
        if args[0] == "evaluate":
            raise RuntimeError("lordkit evaluate exited 1: stopped here")
        return "", 1.0

    monkeypatch.setattr(rs, "lordkit", fake)
    rs.main(["--out", str(tmp_path / "out"), "--budgets", "40s", "--limit", "20", *flag])
    assert [a[0] for a in calls] == ["preprocess", "split-samples", "train", "train-encoders", "evaluate"]
    for args in calls:
        assert ("--cpu-bf16" in args) == (bool(flag) and args[0] in ("train", "train-encoders"))
