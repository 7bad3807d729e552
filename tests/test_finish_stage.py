"""The end of a training stage after a crash, and its start.

A run killed after its last checkpoint (while it draws its last sample grid or writes its weights)
is finished from that checkpoint: `--resume` writes the weights and the last sample grid, byte for
byte those of an uninterrupted run; train-encoders (stage 1's weights) and export (stage 2's) write
the weights themselves. A training that stops before its first checkpoint leaves no model behind,
so the retry just works.

The kills are real: `LORDKIT_FAULT_KILL=stage-last-checkpoint` (the final checkpoint is in place,
nothing after it) and `stage-last-grid` (the last grid is written under its temporary name, not yet
renamed) make the training process SIGKILL itself there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from conftest import one_line_error  # noqa: E402
from test_training import TINY_DATA, TINY_SET, quiet, tiny_cfg  # noqa: E402

from lordkit.errors import LordkitError  # noqa: E402
from lordkit.modeldir import (checkpoint_dir, config_path, load_class_bank, load_latent, sample_path,  # noqa: E402
                              stage1_files, weights_path, write_checkpoint)

DATA_OPTS = [a for k, v in TINY_DATA.items() for a in ("--opt", f"{k}={v}")]
LATENT_EPOCHS, AMORTIZED_EPOCHS = 2, 1
TRAIN = ("train", "-dn", "syn", *TINY_SET, "--epochs", str(LATENT_EPOCHS), "--device", "cpu", "--no-tensorboard")
ENCODERS = ("train-encoders", "-dn", "syn", "--epochs", str(AMORTIZED_EPOCHS), "--device", "cpu", "--no-tensorboard")


def lordkit(base: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """Run a command; with `fault`, it must die by SIGKILL at that fault point, else succeed."""
    env = {**os.environ, "LORDKIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if fault:
        env["LORDKIT_FAULT_KILL"] = fault
    proc = subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == (-signal.SIGKILL if fault else 0), proc.stderr
    return proc


def hidden(parent: Path) -> list[str]:
    return sorted(str(p.relative_to(parent)) for p in parent.rglob(".*") if p.name != ".lock")


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def last_grid(model: Path, stage: str) -> Path:
    return sample_path(model, stage, LATENT_EPOCHS if stage == "latent" else AMORTIZED_EPOCHS)


def logged(model: Path, stage: str) -> list[int]:
    rows = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["stage"] == stage]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A base dir with the tiny data `syn` and `whole`: both stages trained without interruption."""
    base = tmp_path_factory.mktemp("home")
    lordkit(base, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS)
    lordkit(base, *TRAIN, "-mn", "whole")
    lordkit(base, *ENCODERS, "-mn", "whole")
    return base


def stage1_copy(home: Path, name: str) -> Path:
    """A model whose stage 1 is `whole`'s (its config, data record and weights), stage 2 not trained."""
    model = home / "models" / name
    model.mkdir()
    for src, dst in zip(stage1_files(home / "models" / "whole"), stage1_files(model)):
        shutil.copyfile(src, dst)
    return model


@pytest.mark.slow
def test_train_killed_after_its_last_checkpoint_resumes_to_the_same_files(home):
    whole, model = home / "models" / "whole", home / "models" / "a"
    lordkit(home, *TRAIN, "-mn", "a", fault="stage-last-checkpoint")
    assert not weights_path(model, "latent").exists() and not last_grid(model, "latent").exists()
    progress = json.loads((checkpoint_dir(model, "latent") / "progress.json").read_text())
    assert progress["step"] == progress["total_steps"]

    done = lordkit(home, *TRAIN, "-mn", "a", "--resume")
    assert "stage 1 done" in done.stdout and "loss nan" not in done.stdout, done.stdout
    assert same_bytes(weights_path(model, "latent"), weights_path(whole, "latent"))
    assert same_bytes(last_grid(model, "latent"), last_grid(whole, "latent"))
    assert logged(model, "latent") == logged(whole, "latent")  # no metrics line is written twice

    again = subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(home), *TRAIN, "-mn", "a", "--resume"],
                           capture_output=True, text=True, env={**os.environ, "LORDKIT_OFFLINE": "1"})
    assert again.returncode == 2 and "complete" in again.stderr and "nothing to resume" in again.stderr
    assert hidden(model) == []


@pytest.mark.slow
def test_train_killed_while_writing_its_last_grid_is_finished_by_train_encoders(home):
    whole, model = home / "models" / "whole", home / "models" / "b"
    lordkit(home, *TRAIN, "-mn", "b", fault="stage-last-grid")
    assert not weights_path(model, "latent").exists() and not last_grid(model, "latent").exists()
    assert len(hidden(model / "samples")) == 1  # the grid under its temporary name

    # Stage 2 needs stage 1's weights: it writes them from the last checkpoint, then trains as usual.
    lordkit(home, *ENCODERS, "-mn", "b")
    assert same_bytes(weights_path(model, "latent"), weights_path(whole, "latent"))
    assert same_bytes(weights_path(model, "amortized"), weights_path(whole, "amortized"))

    # The last grid of stage 1 is drawn by its --resume, which needs the data.
    assert not last_grid(model, "latent").exists()
    lordkit(home, *TRAIN, "-mn", "b", "--resume")
    assert same_bytes(last_grid(model, "latent"), last_grid(whole, "latent"))
    assert same_bytes(weights_path(model, "latent"), weights_path(whole, "latent"))
    assert hidden(model) == []


@pytest.mark.slow
def test_train_encoders_killed_after_its_last_checkpoint_is_finished_by_export_or_resume(home):
    from lordkit.runtime.bundle import Bundle

    whole = home / "models" / "whole"
    c = stage1_copy(home, "c")
    lordkit(home, *ENCODERS, "-mn", "c", fault="stage-last-checkpoint")
    assert not weights_path(c, "amortized").exists()
    lordkit(home, "export", "-mn", "c", "--no-torchscript")
    assert same_bytes(weights_path(c, "amortized"), weights_path(whole, "amortized"))
    Bundle(home / "exports" / "c")

    d = stage1_copy(home, "d")
    lordkit(home, *ENCODERS, "-mn", "d", fault="stage-last-grid")
    refused = subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(home), *ENCODERS, "-mn", "d"],
                             capture_output=True, text=True, env={**os.environ, "LORDKIT_OFFLINE": "1"})
    assert refused.returncode == 2 and "--resume to finish it" in refused.stderr, refused.stderr
    lordkit(home, *ENCODERS, "-mn", "d", "--resume")
    assert same_bytes(weights_path(d, "amortized"), weights_path(whole, "amortized"))
    assert same_bytes(last_grid(d, "amortized"), last_grid(whole, "amortized"))
    assert hidden(home / "models") == [] and hidden(home / "exports") == []


# ---------------------------------------------------------------------------------------------
# When the checkpoint cannot finish the stage.


def model_killed_after_checkpoint(path: Path, **progress) -> Path:
    """A random model dir whose stage 1 stopped after a checkpoint: its weights are there, latent.safetensors is not."""
    from factories import make_model_dir
    from safetensors.torch import load_file

    from lordkit.modeldir import load_config, stage_settings

    make_model_dir(path)
    state = load_file(weights_path(path, "latent"))
    weights_path(path, "latent").unlink()
    fields = {"stage": "latent", "step": 6, "epoch": 2, "total_steps": 6,
              "settings": stage_settings(load_config(path), "latent"), **progress}
    write_checkpoint(path, "latent", state, {"step": fields["step"]}, fields)
    return path


@pytest.mark.parametrize("reader", ["load_latent", "load_class_bank"])
def test_readers_write_the_weights_of_a_final_checkpoint(tmp_path, reader):
    from lordkit.modeldir import load_config

    m = model_killed_after_checkpoint(tmp_path / "m")
    if reader == "load_latent":
        load_latent(m)
    else:
        load_class_bank(m, load_config(m).model)
    assert same_bytes(weights_path(m, "latent"), checkpoint_dir(m, "latent") / "model.safetensors")
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("progress, expected", [
    ({"step": 3}, "stopped at step 3/6; continue it with `lordkit train -dn tiny -mn m --resume`"),
    ({"settings": "0123456789abcdef"}, "written under other settings than config.json holds now"),
    ({"collapse_stop": True}, "stopped on a collapse at step 6/6; `lordkit train -dn tiny -mn m --resume` writes"),
])
def test_readers_refuse_a_checkpoint_that_does_not_end_the_stage(tmp_path, progress, expected):
    m = model_killed_after_checkpoint(tmp_path / "m", **progress)
    with pytest.raises(LordkitError, match="has no trained stage 1") as e:
        load_latent(m)
    assert expected in str(e.value)
    assert not weights_path(m, "latent").exists()


def test_readers_leave_a_stage_being_trained_to_its_trainer(tmp_path):
    m = model_killed_after_checkpoint(tmp_path / "m")
    with open(m / ".lock", "a+") as f:  # another process's trainer holds the lock
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("pid 1")
        f.flush()
        with pytest.raises(LordkitError, match="being trained"):
            load_latent(m)
    assert not weights_path(m, "latent").exists()


# ---------------------------------------------------------------------------------------------
# A training that stops before its first checkpoint leaves nothing behind.


@pytest.fixture
def no_vgg(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no VGG16 weights there
    monkeypatch.setenv("LORDKIT_OFFLINE", "1")


def test_train_that_stops_at_once_leaves_no_model_and_the_retry_works(cli, base, no_vgg):
    assert cli("preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS).exit_code == 0
    train = ["train", "-dn", "syn", "-mn", "m", *TINY_SET, "--epochs", "1", "--device", "cpu", "--no-tensorboard"]
    err = one_line_error(cli(*train, "--loss", "vgg"))
    assert "--loss l1" in err
    assert not (base / "models" / "m").exists() and hidden(base / "models") == []
    r = cli(*train, "--loss", "l1")
    assert r.exit_code == 0, r.output

    # --force over a trained model that then stops at once: the old model is gone (--force said so),
    # nothing of the failed run stays, and the retry needs no --force.
    one_line_error(cli(*train, "--loss", "vgg", "--force"))
    assert sorted(p.name for p in (base / "models" / "m").iterdir()) == [".lock"]
    assert cli(*train, "--loss", "l1").exit_code == 0


def test_train_encoders_that_stops_at_once_leaves_the_model_as_it_was(cli, base, no_vgg):
    assert cli("preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS).exit_code == 0
    r = cli("train", "-dn", "syn", "-mn", "m", *TINY_SET, "--epochs", "1", "--device", "cpu", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    model = base / "models" / "m"
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    encoders = ["train-encoders", "-dn", "syn", "-mn", "m", "--epochs", "1", "--device", "cpu", "--no-tensorboard"]
    err = one_line_error(cli(*encoders, "--loss", "vgg"))
    assert "--loss l1" in err
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before  # config.json as it was
    assert not checkpoint_dir(model, "amortized").exists() and hidden(model) == []
    r = cli(*encoders, "--loss", "l1")
    assert r.exit_code == 0, r.output
    assert json.loads(config_path(model).read_text())["amortized"]["loss"] == "l1"


def test_a_nan_before_the_first_checkpoint_leaves_no_model(tmp_path):
    import torch

    from lordkit.data.preprocess import preprocess
    from lordkit.data.sources import Options
    from lordkit.data.store import Dataset
    from lordkit.models import Generator
    from lordkit.training import NonFiniteLoss, train_latent

    preprocess("synthetic", None, tmp_path / "syn", img_size=32, opts=Options(dict(TINY_DATA)), show_progress=False)

    def nan_images(module, args, output):
        return torch.full_like(output, float("nan")) if isinstance(module, Generator) else None

    handle = torch.nn.modules.module.register_module_forward_hook(nan_images)
    try:
        with pytest.raises(NonFiniteLoss, match="no checkpoint was written yet"):
            train_latent(Dataset(tmp_path / "syn"), tmp_path / "models" / "m", tiny_cfg("latent.n_epochs=2"), **quiet())
    finally:
        handle.remove()
    assert not (tmp_path / "models" / "m").exists()


@pytest.mark.slow
def test_train_killed_before_its_first_checkpoint_is_retried_without_flags(base):
    lordkit(base, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS)
    train = ("train", "-dn", "syn", *TINY_SET, "--epochs", "1", "--device", "cpu", "--no-tensorboard", "-mn", "m")
    lordkit(base, *train, fault="file-before-rename:2")  # config.json in place, data.json not yet
    model = base / "models" / "m"
    assert (model / "config.json").is_file() and not (model / "data.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *train, "--resume"],
                             capture_output=True, text=True, env={**os.environ, "LORDKIT_OFFLINE": "1"})
    assert resumed.returncode == 2 and "train it again without --resume" in resumed.stderr, resumed.stderr
    lordkit(base, *train)  # nothing in the dir could be continued: it is started anew
    assert weights_path(model, "latent").is_file() and hidden(base / "models") == []
