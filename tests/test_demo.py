"""The main job end to end, in its quick variant: every step runs and every artefact is where the summary says."""

import json
from pathlib import Path

import cv2
import pytest

from conftest import one_line_error

pytestmark = pytest.mark.slow


def test_quick_demo_runs_every_step(cli, base):
    r = cli("demo", "--quick")
    assert r.exit_code == 0, r.output
    summary = json.loads((base / "models" / "demo" / "demo-summary.json").read_text())
    for key in ("dataset", "train", "test", "model", "export", "transfer_grid", "evaluation", "contact_sheet"):
        assert Path(summary[key]).exists(), key
    grid = cv2.imread(summary["transfer_grid"])
    assert grid is not None and grid.shape[0] > 64
    assert (base / "exports" / "demo" / "manifest.json").exists()
    assert summary["parity_max_abs_err"] < 1e-4
    assert summary["transfer_ratio_to_baseline"] > 0 and 0 <= summary["leakage_accuracy"] <= 1
    assert summary["bench"] and {row["backend"] for row in summary["bench"]} >= {"eager", "ort-cpu"}
    for word in ("transfer error", "leakage", "copy baseline", "chance"):
        assert word in r.stdout
    # A second run does not touch the first without --force.
    assert "--force" in one_line_error(cli("demo", "--quick"))
