"""Training on tiny configs, CPU: loss falls, resume equals uninterrupted, interrupts and NaNs are safe."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lordkit.config import TINY_MODEL, preset
from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError
from lordkit.modeldir import (demo_path, eval_grid_path, eval_json_path, load_amortized, load_latent, lock_path,
                              metrics_path, sample_path, save_config, stage1_files, tensorboard_dir, training_lock)
from lordkit.models import Generator
from lordkit.training import NonFiniteLoss, TrainingInterrupted, train_amortized, train_latent

from conftest import one_line_error

TINY_DATA = {"n_x": "2", "n_y": "2", "n_scale": "1", "n_rotation": "2", "n_hue": "2", "n_shapes": "3"}
TINY_STAGE = {"batch_size": 16, "log_every": 1, "loss": "l1"}
TINY = {"model": TINY_MODEL, "latent": {**TINY_STAGE, "sample_every_epochs": 1}, "amortized": TINY_STAGE}
# The same settings as `--set section.field=value` arguments of the CLI.
TINY_SET = [a for section, fields in TINY.items() for name, value in fields.items()
            for a in ("--set", f"{section}.{name}=" + (",".join(map(str, value)) if isinstance(value, tuple) else str(value)))]


def tiny_cfg(*extra):
    return preset("synthetic").replace(**TINY).apply_overrides(list(extra))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    preprocess("synthetic", None, root / "syn", img_size=32, opts=Options(dict(TINY_DATA)), show_progress=False)
    return Dataset(root / "syn")


def metrics(model_dir, stage):
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == stage]


def quiet(**kw):
    return dict(show_progress=False, tensorboard=False, device="cpu", **kw)


def test_model_dir_paths_spell_the_documented_layout(tmp_path):
    m = tmp_path / "m"
    assert stage1_files(m) == (m / "config.json", m / "data.json", m / "latent.safetensors")
    assert metrics_path(m) == m / "metrics.jsonl" and lock_path(m) == m / ".lock"
    assert sample_path(m, "amortized", 7) == m / "samples" / "amortized-epoch-0007.png"
    assert tensorboard_dir(m, "latent") == m / "tensorboard" / "latent"
    assert eval_json_path(m, "syn") == m / "eval" / "syn.json"
    assert eval_grid_path(m, "syn") == m / "eval" / "syn-transfer.png"
    assert demo_path(m, "summary.json") == m / "demo-summary.json"


def test_loss_falls_and_both_stages_write_their_files(data, tmp_path):
    m = tmp_path / "m"
    train_latent(data, m, tiny_cfg("latent.n_epochs=25"), **quiet())
    rec = [r["rec"] for r in metrics(m, "latent")]
    assert np.mean(rec[-3:]) < 0.7 * np.mean(rec[:3]), rec
    for name in ("config.json", "data.json", "latent.safetensors", "checkpoints/latent/state.pt"):
        assert (m / name).exists(), name
    assert len(list((m / "samples").glob("latent-epoch-*.png"))) == 25
    assert sample_path(m, "latent", 25).is_file()
    cfg = json.loads((m / "config.json").read_text())
    assert cfg["model"]["n_imgs"] == len(data) and cfg["model"]["n_classes"] == 3

    train_amortized(data, m, changes={"n_epochs": 15}, **quiet())
    rows = metrics(m, "amortized")
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (m / "amortized.safetensors").exists()
    model = load_amortized(m)
    out, content, cls = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and content.shape == (2, 8) and cls.shape == (2, 8)
    with pytest.raises(LordkitError, match="already trained"):
        train_amortized(data, m, **quiet())


def interrupt_at(step_no):
    def hook(step):
        if step == step_no:
            signal.raise_signal(signal.SIGINT)
    return hook


def test_resume_equals_uninterrupted(data, tmp_path):
    cfg = tiny_cfg("latent.n_epochs=3", "model.content_std=0.5")
    train_latent(data, tmp_path / "a", cfg, **quiet())
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_latent(data, tmp_path / "b", cfg, **quiet(on_step=interrupt_at(4)))
    assert not (tmp_path / "b" / "latent.safetensors").exists()
    progress = json.loads((tmp_path / "b" / "checkpoints" / "latent" / "progress.json").read_text())
    assert progress["step"] == 4
    train_latent(data, tmp_path / "b", cfg, resume=True, **quiet())
    a = load_file(tmp_path / "a" / "latent.safetensors")
    b = load_file(tmp_path / "b" / "latent.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)

    # Stage 2 resumes the same way.
    train_amortized(data, tmp_path / "a", changes={"n_epochs": 2}, **quiet())
    with pytest.raises(TrainingInterrupted):
        train_amortized(data, tmp_path / "b", changes={"n_epochs": 2}, **quiet(on_step=interrupt_at(2)))
    with pytest.raises(LordkitError, match="--resume"):
        train_amortized(data, tmp_path / "b", changes={"n_epochs": 2}, **quiet())
    train_amortized(data, tmp_path / "b", resume=True, **quiet())
    a = load_file(tmp_path / "a" / "amortized.safetensors")
    b = load_file(tmp_path / "b" / "amortized.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)

    # A finished stage has nothing to resume: said once, instead of a run of no steps ("loss nan").
    for stage, train in (("latent", lambda: train_latent(data, tmp_path / "b", cfg, resume=True, **quiet())),
                         ("amortized", lambda: train_amortized(data, tmp_path / "b", resume=True, **quiet()))):
        with pytest.raises(LordkitError, match=f"the {stage} stage of .* is complete .*nothing to resume"):
            train()


def test_nan_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    m = tmp_path / "m"
    poisoned = {"on": False}

    def poison(step):
        poisoned["on"] = step >= 7  # in the third epoch: two good checkpoints exist

    def nan_images(module, args, output):
        if poisoned["on"] and isinstance(module, Generator):
            return torch.full_like(output, float("nan"))
        return None

    # torch's global forward hook reaches the generator the trainer builds, whatever wraps it.
    handle = torch.nn.modules.module.register_module_forward_hook(nan_images)
    try:
        with pytest.raises(NonFiniteLoss, match="last good checkpoint.*--resume continues"):
            train_latent(data, m, tiny_cfg("latent.n_epochs=5"), **quiet(on_step=poison))
    finally:
        handle.remove()
    state = load_file(m / "checkpoints" / "latent" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())
    progress = json.loads((m / "checkpoints" / "latent" / "progress.json").read_text())
    assert progress["step"] == 6
    assert not (m / "latent.safetensors").exists()


def test_refuses_existing_model_and_concurrent_training(data, tmp_path):
    m = tmp_path / "m"
    cfg = tiny_cfg("latent.n_epochs=1")
    train_latent(data, m, cfg, **quiet())
    before = (m / "latent.safetensors").read_bytes()
    with pytest.raises(LordkitError, match="--force"):
        train_latent(data, m, cfg, **quiet())
    assert (m / "latent.safetensors").read_bytes() == before
    with training_lock(m):
        with pytest.raises(LordkitError, match="being trained"):
            train_latent(data, m, cfg, force=True, **quiet())
        assert (m / ".lock").read_text() == f"pid {os.getpid()}"  # the refused trainer left the holder's pid
    train_latent(data, m, tiny_cfg("latent.n_epochs=1", "latent.seed=5"), force=True, **quiet())
    assert (m / "latent.safetensors").read_bytes() != before
    load_latent(m)


def test_stage2_needs_stage1_and_matching_data(data, tmp_path):
    with pytest.raises(LordkitError, match="model not found"):
        train_amortized(data, tmp_path / "none", **quiet())
    m = tmp_path / "m"
    train_latent(data, m, tiny_cfg("latent.n_epochs=1"), **quiet())
    other = tmp_path / "other"
    preprocess("synthetic", None, other, img_size=32, opts=Options({**TINY_DATA, "n_hue": "3"}), show_progress=False)
    with pytest.raises(LordkitError, match="images"):
        train_amortized(Dataset(other), m, **quiet())
    with pytest.raises(LordkitError, match="amortized.n_epoch"):
        train_amortized(data, m, changes={"n_epoch": 3}, **quiet())


def test_cli_trains_both_stages(cli, base):
    assert cli("preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32",
               *[a for k, v in TINY_DATA.items() for a in ("--opt", f"{k}={v}")]).exit_code == 0
    r = cli("train", "-dn", "syn", "-mn", "m", *TINY_SET, "--epochs", "2", "--device", "cpu", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    assert "stage 1 done" in r.stdout
    assert json.loads((base / "models" / "m" / "config.json").read_text())["latent"]["n_epochs"] == 2
    r = cli("train-encoders", "-dn", "syn", "-mn", "m", "--epochs", "1", "--set", "amortized.log_every=2",
            "--device", "cpu", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    assert "stage 2 done" in r.stdout
    saved = json.loads((base / "models" / "m" / "config.json").read_text())["amortized"]
    assert saved["n_epochs"] == 1 and saved["log_every"] == 2


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory):
    """`lordkit --base-dir HOME ...` where HOME holds the tiny data `syn` and a model `half`: a config
    and data matching `syn`, but no trained stage 1."""
    from typer.testing import CliRunner

    from lordkit.cli.app import app

    home = tmp_path_factory.mktemp("home")
    preprocess("synthetic", None, home / "data" / "syn", img_size=32, opts=Options(dict(TINY_DATA)),
               show_progress=False)
    ds = Dataset(home / "data" / "syn")
    (home / "models" / "half").mkdir(parents=True)
    save_config(home / "models" / "half", tiny_cfg().replace(model=dict(
        n_imgs=len(ds), n_classes=ds.n_classes, img_size=ds.meta.img_size, channels=ds.meta.channels)))
    (home / "models" / "kept").mkdir(parents=True)  # not a training's leftover: never started anew
    (home / "models" / "kept" / "notes.txt").write_text("mine")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["--base-dir", str(home), *map(str, args)])


CPU = ["--device", "cpu"]
BAD_INPUTS = [
    (["train", "-dn", "syn", "-mn", "kept", *TINY_SET, *CPU], ["--force"]),
    (["train", "-dn", "syn", "-mn", "x", "--set", "latent.bacth_size=3"], ["unknown config key"]),
    (["train", "-dn", "nodata", "-mn", "x"], ["not found"]),
    (["train", "-dn", "syn", "-mn", "x", "--preset", "nonsense"], ["unknown preset 'nonsense'", "synthetic"]),
    (["train", "-dn", "syn", "-mn", "../x"], ["invalid model name"]),
    (["train", "-dn", "syn", "-mn", "v", *TINY_SET, "--loss", "vgg", *CPU], ["--vgg-weights", "--loss l1"]),
    (["train-encoders", "-dn", "syn", "-mn", "half", *CPU], ["no trained stage 1"]),
    (["train-encoders", "-dn", "syn", "-mn", "half", "--set", "latent.n_epochs=3", *CPU], ["only takes amortized.*"]),
    (["train-encoders", "-dn", "syn", "-mn", "half", "--set", "amortized.n_epoch=3", *CPU], ["unknown config key"]),
    (["train-encoders", "-dn", "syn", "-mn", "none", *CPU], ["model not found"]),
    (["train", "-dn", "syn", "-mn", "d", *TINY_SET, "--device", "nonsense"], ["unknown device 'nonsense'"]),
    pytest.param(["train", "-dn", "syn", "-mn", "g", *TINY_SET, "--device", "cuda"], ["CUDA is not available"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
]


@pytest.mark.parametrize("args, expected", BAD_INPUTS)
def test_cli_bad_input_is_one_line(cli_home, args, expected):
    err = one_line_error(cli_home(*args))
    assert all(part in err for part in expected), err


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint(base, tmp_path):
    env = {**os.environ, "LORDKIT_HOME": str(base), "PYTHONUNBUFFERED": "1"}
    opts = [a for k, v in TINY_DATA.items() for a in ("--opt", f"{k}={v}")]
    subprocess.run([sys.executable, "-m", "lordkit", "preprocess", "-di", "synthetic", "-dn", "syn",
                    "--img-size", "32", *opts], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "lordkit", "train", "-dn", "syn", "-mn", "m", *TINY_SET,
                             "--epochs", "100000", "--device", "cpu", "--no-tensorboard"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics_file = base / "models" / "m" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SIGTERM received" in err and "--resume" in err
    ckpt = base / "models" / "m" / "checkpoints" / "latent"
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    weights = load_file(ckpt / "model.safetensors")
    assert state["step"] >= 5 and all(torch.isfinite(v).all() for v in weights.values())
    assert not list(ckpt.parent.glob(".*partial"))


def test_cpu_bf16_trains_where_native_and_is_refused_elsewhere(data, tmp_path, monkeypatch):
    import lordkit.device

    monkeypatch.setattr(lordkit.device, "native_bf16", lambda: False)
    with pytest.raises(LordkitError, match="native bf16"):
        train_latent(data, tmp_path / "no", tiny_cfg("latent.n_epochs=1"), cpu_bf16=True, **quiet())
    monkeypatch.setattr(lordkit.device, "native_bf16", lambda: True)
    fp32 = train_latent(data, tmp_path / "fp32", tiny_cfg("latent.n_epochs=3"), **quiet())
    bf16 = train_latent(data, tmp_path / "bf16", tiny_cfg("latent.n_epochs=3"), cpu_bf16=True, **quiet())
    weights = load_file(tmp_path / "bf16" / "latent.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    assert abs(bf16["loss"] - fp32["loss"]) < 0.1 * fp32["loss"]  # the same run, to bf16's precision


def test_collapse_probes_leave_training_unchanged(data, tmp_path):
    # The probe draws no random numbers and runs in eval mode: the trained weights are those of a run
    # with detection off, so presets keep their numbers.
    a, b = tmp_path / "a", tmp_path / "b"
    train_latent(data, a, tiny_cfg("latent.n_epochs=3"), **quiet())
    train_latent(data, b, tiny_cfg("latent.n_epochs=3", "latent.collapse_threshold=0", "latent.sample_every_epochs=3"),
                 **quiet())
    wa, wb = load_file(a / "latent.safetensors"), load_file(b / "latent.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any("content_ratio" in r for r in metrics(a, "latent"))
