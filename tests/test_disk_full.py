"""A disk that fills up while a command writes: one error line naming the file, exit 2, nothing left.

The fault is real: the command runs in a process whose file-size limit (RLIMIT_FSIZE) is lower than
what it writes, so its write() fails with EFBIG exactly where a full disk fails with ENOSPC
(Python ignores SIGXFSZ). Both go through the same error path.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_faults import DATA_OPTS, hidden, lordkit  # noqa: E402
from test_training import TINY_SET  # noqa: E402


def limited(base: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args], preexec_fn=pre,
                          env={**os.environ, "LORDKIT_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    base = tmp_path_factory.mktemp("home")
    lordkit(base, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS)
    return base


def test_preprocess(home):
    line = error_line(limited(home, 50_000, "preprocess", "-di", "synthetic", "-dn", "more", "--img-size", "32",
                              *DATA_OPTS))
    assert "file too large" in line and str(home / "data" / "more") in line
    assert not (home / "data" / "more").exists() and hidden(home / "data") == []


# The checkpoint holds model.safetensors (1.2 MB for this model), then state.pt (2.5 MB).
@pytest.mark.parametrize("limit,file", [(300_000, "model.safetensors"), (1_500_000, "state.pt")])
def test_train_checkpoint(home, limit, file):
    line = error_line(limited(home, limit, "train", "-dn", "syn", "-mn", "m", *TINY_SET, "--epochs", "2",
                              "--device", "cpu", "--no-tensorboard", "--force"))
    assert "file too large" in line and line.endswith(f"checkpoints/latent/{file}: file too large for the filesystem "
                                                      "or the process's file-size limit")
    lordkit(home, "data", "list")
    assert hidden(home / "models") == []


def test_transfer_output(home, tmp_path):
    from factories import make_export, make_model_dir

    make_model_dir(tmp_path / "model")
    export = make_export(tmp_path / "model", tmp_path / "export", onnx=True, torchscript=False)
    src = tmp_path / "in.png"
    import numpy as np

    from lordkit.viz import save_png

    save_png(src, (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3))
    out = tmp_path / "out"
    line = error_line(limited(home, 1_000, "transfer", str(src), "-m", str(export), "--class-id", "0", "--class-id",
                              "1", "-o", str(out)))
    assert "file too large" in line and str(out) in line
    assert not [p for p in tmp_path.rglob(".*")]
