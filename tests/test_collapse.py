"""Collapse detection: the variation ratios, the once-only decision after the warm-up, and the training
plumbing (ratios in metrics.jsonl, one warning line, --stop-on-collapse exits 2 with a checkpoint)."""

import json
from pathlib import Path

import pytest
import torch

from lordkit.collapse import CollapseDetected, CollapseWatch, pixel_spread, training_collapse, variation_ratios
from lordkit.config import ConfigError
from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options
from lordkit.data.store import Dataset
from lordkit.training import train_amortized, train_latent
from test_training import TINY_DATA, TINY_SET, quiet, tiny_cfg

from conftest import one_line_error


def test_variation_ratios_separate_content_and_class():
    torch.manual_seed(0)
    real = torch.rand(32, 3, 8, 8)
    spread = pixel_spread(real)
    assert 0.2 < spread < 0.35  # uniform noise: std 0.29
    black = torch.zeros(6, 4, 3, 8, 8)
    assert variation_ratios(black, spread) == {"content_ratio": 0.0, "class_ratio": 0.0}
    # Output follows the content only: content ratio about 1, class ratio 0.
    content_only = real[:6, None].expand(6, 4, 3, 8, 8)
    r = variation_ratios(content_only, spread)
    assert 0.8 < r["content_ratio"] < 1.2 and r["class_ratio"] == 0.0
    r = variation_ratios(real[:4, None].expand(4, 6, 3, 8, 8).transpose(0, 1), spread)
    assert r["content_ratio"] == 0.0 and 0.8 < r["class_ratio"] < 1.2


def test_watch_waits_for_the_warm_up_and_reports_once():
    w = CollapseWatch("latent", threshold=0.05, warmup_epochs=10)
    low = {"content_ratio": 0.01, "class_ratio": 0.3}
    assert w.check(low, 5) is None  # still warming up
    assert w.check({"content_ratio": 0.4, "class_ratio": 0.3}, 12) is None
    event = w.check(low, 14)
    assert event["below"] == ["content_ratio"] and event["epoch"] == 14
    assert w.check(low, 16) is None  # once
    msg = w.message()
    assert "\n" not in msg and "content code" in msg and "0.010" in msg and "content_std" in msg
    assert CollapseWatch("latent", 0.0, 0).check(low, 20) is None  # threshold 0: off


def test_each_stage_builds_its_watch_from_its_config_section():
    cfg = tiny_cfg("latent.n_epochs=10", "latent.collapse_warmup=0.3", "latent.collapse_threshold=0.2",
                   "amortized.stop_on_collapse=true")

    def probe():
        return {"content_ratio": 0.1, "class_ratio": 0.5}

    w = CollapseWatch.for_stage("latent", cfg.latent, probe)
    assert (w.threshold, w.warmup_epochs, w.stop, w.probe) == (0.2, pytest.approx(3.0), False, probe)
    assert CollapseWatch.for_stage("amortized", cfg.amortized, probe).stop
    # A stop is one error naming step and checkpoint; a rank that saw no collapse itself says so.
    assert w.check(probe(), 4)["below"] == ["content_ratio"]
    err = w.stopped(12, Path("ck"))
    assert isinstance(err, CollapseDetected) and err.exit_code == 2
    assert str(err).startswith("latent stage collapsed at epoch 4") and str(err).endswith("at step 12 in ck")
    other = CollapseWatch("amortized", 0.1, 0).stopped(3, Path("ck"))
    assert str(other) == ("amortized stage collapsed on another rank; stopped (stop_on_collapse) with a checkpoint "
                          "at step 3 in ck")


def test_config_checks_the_new_fields():
    with pytest.raises(ConfigError, match="collapse_warmup"):
        tiny_cfg("latent.collapse_warmup=1.5")
    with pytest.raises(ConfigError, match="collapse_threshold"):
        tiny_cfg("amortized.collapse_threshold=-1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    preprocess("synthetic", None, root / "syn", img_size=32, opts=Options(dict(TINY_DATA)), show_progress=False)
    return Dataset(root / "syn")


def rows(model_dir):
    return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


def test_ratios_are_logged_and_a_collapse_is_recorded_once(data, tmp_path, capsys):
    m = tmp_path / "m"
    # A threshold above any ratio makes every probe "collapsed": the event must still be recorded once.
    cfg = tiny_cfg("latent.n_epochs=4", "latent.sample_every_epochs=2", "latent.collapse_threshold=100",
                   "latent.collapse_warmup=0.5")
    train_latent(data, m, cfg, **quiet())
    probed = [r for r in rows(m) if "content_ratio" in r]
    assert [round(r["epoch"]) for r in probed] == [2, 4]  # with the sample grids
    assert all(r["content_ratio"] >= 0 and r["class_ratio"] >= 0 for r in probed)
    assert [r.get("event") for r in probed] == ["collapse", None]
    err = capsys.readouterr().err
    assert err.count("warning: latent stage collapsed at epoch 2") == 1
    # Stage 2 probes every epoch (it samples every epoch); the default threshold leaves it alone here.
    train_amortized(data, m, changes={"n_epochs": 2, "collapse_threshold": 0.0}, **quiet())
    seen = training_collapse(m)
    assert seen["latent"]["collapse"]["epoch"] == 2 and seen["amortized"]["collapse"] is None
    assert len([r for r in rows(m) if r["stage"] == "amortized" and "content_ratio" in r]) == 2


def test_stop_on_collapse_keeps_the_checkpoint(data, tmp_path):
    m = tmp_path / "m"
    cfg = tiny_cfg("latent.n_epochs=4", "latent.collapse_threshold=100", "latent.collapse_warmup=0",
                   "latent.stop_on_collapse=true")
    with pytest.raises(CollapseDetected, match="stopped") as e:
        train_latent(data, m, cfg, **quiet())
    assert e.value.exit_code == 2
    assert (m / "checkpoints" / "latent" / "state.pt").exists() and not (m / "latent.safetensors").exists()


def test_cli_stop_on_collapse_is_one_error_line(base, cli):
    preprocess("synthetic", None, base / "data" / "syn", img_size=32, opts=Options(dict(TINY_DATA)),
               show_progress=False)
    args = ["-dn", "syn", *TINY_SET, "--epochs", "3", "--device", "cpu", "--no-tensorboard"]
    r = cli("train", "-mn", "m", *args, "--set", "latent.collapse_threshold=100", "--set", "latent.collapse_warmup=0",
            "--stop-on-collapse")
    assert r.exit_code == 2
    line = one_line_error(r)
    assert "latent stage collapsed at epoch 1" in line and "checkpoint" in line
    assert (base / "models" / "m" / "checkpoints" / "latent").is_dir()
    # Without the flag the same run finishes, and stage 2 takes the flag too.
    assert cli("train", "-mn", "n", *args, "--set", "latent.collapse_threshold=100").exit_code == 0
    r = cli("train-encoders", "-mn", "n", "-dn", "syn", "--epochs", "2", "--device", "cpu", "--no-tensorboard",
            "--set", "amortized.collapse_threshold=100", "--set", "amortized.collapse_warmup=0", "--stop-on-collapse")
    assert r.exit_code == 2 and "amortized stage collapsed" in one_line_error(r)


class _Bank:
    device = torch.device("cpu")

    def batch(self, idx):
        return torch.rand(len(idx), 3, 8, 8, generator=torch.Generator().manual_seed(1))


class _PartlyDead:
    """A stage-1 model built to have dead parts: the image is a pattern scaled by the first entry of
    the content code (codes 0..7 have it 0: dead) plus a shade per class; class 3 draws no pattern
    (every content comes out the same in it)."""

    def __init__(self):
        codes = torch.zeros(16, 4)
        codes[8:, 0] = torch.tensor([1.0, -1.0] * 4)
        codes[:, 1:] = torch.randn(16, 3)  # the entries the generator ignores
        self.content_embedding = lambda idx: codes[idx]
        self.class_embedding = lambda ids: ids.float()[:, None]
        self.modulation = lambda code: code

    def eval(self):
        return self

    def generator(self, code, params):  # (B, 4), (B, 1) -> (B, 3, 8, 8)
        pattern = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)
        live = (params[:, 0] != 3).float()[:, None, None, None]
        img = 0.5 + 0.4 * torch.tanh(code[:, :1, None, None]) * pattern * live + 0.05 * params[:, :, None, None]
        return img.expand(-1, 3, -1, -1)


def test_partial_collapse_counts_dead_codes_and_classes():
    from lordkit.collapse import LatentProbe

    class_ids = torch.arange(16).remainder(4).numpy()
    probe = LatentProbe(_PartlyDead(), class_ids, _Bank(), seed=0)
    assert len(probe.contents) == 16 and len(probe.classes) == 4
    r = probe()
    assert r["dead_content_fraction"] == 0.5 and r["dead_class_fraction"] == 0.25
    assert r["content_ratio"] > 0.1  # the full-collapse measure alone sees a healthy generator

    w = CollapseWatch("latent", threshold=0.005, warmup_epochs=10)
    assert w.check_partial(r, 5) is None  # warming up
    line = w.check_partial(r, 12)
    assert "50% of the probed content codes" in line and "25% of the probed classes" in line
    assert w.check_partial(r, 13) is None  # once
    healthy = CollapseWatch("latent", threshold=0.005, warmup_epochs=0)
    assert healthy.check_partial({"dead_content_fraction": 0.1, "dead_class_fraction": 0.0}, 1) is None


def test_dead_fractions_of_a_healthy_and_a_dead_grid():
    from lordkit.collapse import dead_fractions

    torch.manual_seed(0)
    real = torch.rand(6, 3, 8, 8)
    grid = real[:, None].expand(6, 2, 3, 8, 8)  # the output follows the content
    assert dead_fractions(grid, torch.zeros(2, 3, 8, 8), pixel_spread(real)) == {
        "dead_content_fraction": 0.0, "dead_class_fraction": 0.0}
    black = torch.zeros(6, 2, 3, 8, 8)
    assert dead_fractions(black, torch.zeros(2, 3, 8, 8), pixel_spread(real)) == {
        "dead_content_fraction": 1.0, "dead_class_fraction": 1.0}
