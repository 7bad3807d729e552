"""Hostile inputs to `lordkit export` and `lordkit import-reference`: each is one `error:` line on
stderr, exit status 2, no traceback, no warning line, and nothing left behind.

One table per command: (case id, a function that damages a fresh tiny model dir or reference dir,
the command's arguments, words the error line must hold). A disk that fills up during the export
is simulated for a real process with RLIMIT_FSIZE (Python ignores SIGXFSZ, so writes fail with EFBIG).
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from factories import make_model_dir
from test_reference import reference_config, write_reference_dir

MARKER = "pwned"  # the file a hostile pickle would create if it ever ran


# --- export -----------------------------------------------------------------------------------------


def _edit_config(**model):
    def damage(model_dir: Path, tmp: Path) -> None:
        path = model_dir / "config.json"
        cfg = json.loads(path.read_text())
        cfg["model"].update(model)
        path.write_text(json.dumps(cfg))
    return damage


def _edit_data(**fields):
    def damage(model_dir: Path, tmp: Path) -> None:
        path = model_dir / "data.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return damage


def _a_file(model_dir: Path, tmp: Path) -> None:
    (tmp / "afile").write_text("not a dir")


def _not_an_export(model_dir: Path, tmp: Path) -> None:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("keep me")


def _an_export(model_dir: Path, tmp: Path) -> None:
    (tmp / "done").mkdir()
    (tmp / "done" / "manifest.json").write_text("{}")


def _read_only(model_dir: Path, tmp: Path) -> None:
    (tmp / "ro").mkdir()
    os.chmod(tmp / "ro", 0o555)


def _nothing(model_dir: Path, tmp: Path) -> None:
    pass


EXPORT_CASES = [
    # Weights and config that no longer agree (modeldir's loader reports it).
    ("content-dim", _edit_config(content_dim=9), [], ["does not match", "config.json"]),
    ("adain-layers", _edit_config(n_adain_layers=3), [], ["does not match", "config.json"]),
    ("class-dim", _edit_config(class_dim=5), [], ["config.json"]),
    ("n-classes", _edit_config(n_classes=4), [], ["class table", "config.json"]),
    # A data record that cannot become a valid manifest.
    ("class-names-int", _edit_data(class_names=7), [], ["class_names must be a list"]),
    ("class-names-twice", _edit_data(class_names=["a", "a", "b"]), [], ["distinct", "'a'"]),
    ("face-template", _edit_data(face_template=[[0.5]]), [], ["face_template"]),
    # Output paths.
    ("out-under-file", _a_file, ["-o", "{tmp}/afile/sub"], ["afile is a file, not a directory"]),
    ("out-is-file", _a_file, ["-o", "{tmp}/afile", "--force"], ["is a file, not an export dir"]),
    ("out-not-export", _not_an_export, ["-o", "{tmp}/notes", "--force"], ["not an export dir"]),
    ("out-exists", _an_export, ["-o", "{tmp}/done"], ["already exists", "--force"]),
    ("out-read-only", _read_only, ["-o", "{tmp}/ro/sub/x"], ["cannot write", "no permission", "ro"]),
    # Numbers out of range and options that contradict each other.
    ("opset-low", _nothing, ["--opset", "12"], ["--opset", "18 to 20", "12"]),
    ("opset-legacy-only", _nothing, ["--opset", "17"], ["--opset", "18 to 20", "17", "--onnx-exporter legacy"]),
    ("legacy-opset-low", _nothing, ["--onnx-exporter", "legacy", "--opset", "12"], ["--opset", "13 to 20", "12"]),
    ("onnx-exporter", _nothing, ["--onnx-exporter", "dynamo"], ["--onnx-exporter", "'dynamo'", "torch.export"]),
    ("opset-high", _nothing, ["--opset", "21"], ["--opset", "21"]),
    ("fp16-no-onnx", _nothing, ["--no-onnx", "--fp16"], ["--fp16", "--onnx"]),
    ("int8-bad-data-name", _nothing, ["--int8", "--calibration-data", "../x"], ["invalid data name"]),
]


@pytest.fixture
def as_user(monkeypatch):
    """Permission bits as a non-root user sees them: root's access(2) ignores them, so there
    os.access answers from the mode bits (what the kernel does for other users)."""
    if os.geteuid() != 0:
        return
    real = os.access

    def access(path, mode, **kw):
        st = os.stat(path)
        if mode & os.W_OK and not st.st_mode & 0o222:
            return False
        return real(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("damage, args, words", [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_export_refuses_with_one_line(cli, base, tmp_path, as_user, damage, args, words):
    model = make_model_dir(base / "models" / "m")
    damage(model, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    r = cli("export", "-mn", "m", *[a.format(tmp=tmp_path) for a in args])
    line = one_line_error(r)
    assert r.exit_code == 2, r.output
    assert "warning" not in r.stderr.lower()
    for w in words:
        assert w in line, line
    assert not (base / "exports").exists()  # nothing half-built under the default name either
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written, nothing replaced


def _export_with_file_limit(base: Path, n_bytes: int, *args: str) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))

    cmd = [sys.executable, "-m", "lordkit", "--base-dir", str(base), "export", "-mn", "m", *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, env=env, timeout=300)


# The limit picks the file that fails: the class bank (224 bytes), the first ONNX file (~170 KB),
# the generator's TorchScript file (~1.2 MB; torch's own writer would abort the process there).
@pytest.mark.parametrize("n_bytes, args, failing", [
    (100, [], "class_bank.npy"),
    (100_000, [], "content_encoder.onnx"),
    (1_000_000, ["--no-onnx"], "generator.pt"),
], ids=["class-bank", "onnx", "torchscript"])
def test_export_on_a_full_disk_leaves_nothing(base, n_bytes, args, failing):
    make_model_dir(base / "models" / "m")
    r = _export_with_file_limit(base, n_bytes, *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "file too large" in lines[0] and str(base / "exports" / "m" / failing) in lines[0], lines[0]
    assert os.listdir(base / "exports") == []  # no export, no staging dir, no temporary file


def test_full_disk_keeps_the_previous_export(base):
    make_model_dir(base / "models" / "m")
    out = base / "exports" / "m"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text('{"previous": true}')
    r = _export_with_file_limit(base, 100_000, "--force")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(base / "exports") == ["m"]
    assert os.listdir(out) == ["manifest.json"] and json.loads((out / "manifest.json").read_text()) == {"previous": True}


def test_optimiser_write_failure_names_the_disk(tmp_path):
    """onnxruntime only says "Protobuf serialization failed" when it cannot write the optimised file."""
    from factories import make_export

    from lordkit.errors import LordkitError
    from lordkit.export.exporter import _optimise_onnx
    from lordkit.export.onnxmeta import writing

    exported = make_export(make_model_dir(tmp_path / "m"), tmp_path / "e", torchscript=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    dst = tmp_path / "generator.opt.onnx"
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))
    try:
        with pytest.raises(LordkitError, match=f"file too large .* writing {dst}$"), writing(dst):
            _optimise_onnx(exported / "generator.onnx", dst)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not dst.exists()


# --- import-reference --------------------------------------------------------------------------------


class Payload:
    """A pickle that runs a shell command when loaded by an unrestricted unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    pass


def _latent(fn):
    """Damage latent.pth of a good reference dir: fn(path, good_state, marker)."""
    def damage(src: Path, marker: Path) -> None:
        path = src / "latent.pth"
        fn(path, torch.load(path, weights_only=True), marker)
    return damage


def _unreadable(path: Path, state, marker) -> None:
    if os.geteuid() == 0:  # root reads any mode; an I/O error is what it cannot read
        path.unlink()
        path.symlink_to("/proc/self/mem")
    else:
        os.chmod(path, 0)


def _replace(path: Path, state, marker, **changes) -> None:
    torch.save({**state, **changes}, path)


IMPORT_CASES = [
    ("hostile-pickle", _latent(lambda p, s, m: torch.save({"x": Payload(m)}, p)),
     ["latent.pth", "not plain tensors", "posix.system", "refused for safety"]),
    ("hostile-raw-pickle", _latent(lambda p, s, m: p.write_bytes(pickle.dumps(Payload(m)))),
     ["latent.pth", "not plain tensors", "refused for safety"]),
    ("class-instance", _latent(lambda p, s, m: torch.save({**s, "extra": Plain()}, p)),
     ["not plain tensors", "Plain", "refused for safety"]),
    ("numpy-array", _latent(lambda p, s, m: torch.save({"x": np.zeros(3)}, p)),
     ["not plain tensors", "numpy", "refused for safety"]),
    ("missing-latent", _latent(lambda p, s, m: p.unlink()), ["has no latent.pth"]),
    ("latent-is-dir", _latent(lambda p, s, m: (p.unlink(), p.mkdir())), ["latent.pth is a directory"]),
    ("amortized-is-dir", lambda src, m: ((src / "amortized.pth").unlink(), (src / "amortized.pth").mkdir()),
     ["amortized.pth is a directory"]),
    ("config-is-dir", lambda src, m: ((src / "config.pkl").unlink(), (src / "config.pkl").mkdir()),
     ["config.pkl is a directory"]),
    ("src-is-file", lambda src, m: src / "latent.pth", ["is a file; pass the reference model dir"]),
    ("truncated-zip", _latent(lambda p, s, m: p.write_bytes(p.read_bytes()[:3000])), ["damaged or truncated zip"]),
    ("empty", _latent(lambda p, s, m: p.write_bytes(b"")), ["latent.pth is empty"]),
    ("text-file", _latent(lambda p, s, m: p.write_text("hello\n")), ["not a PyTorch checkpoint"]),
    ("unreadable", _latent(_unreadable), ["cannot read reference weights", "latent.pth"]),
    ("wrong-keys", _latent(lambda p, s, m: torch.save({"foo": torch.zeros(3)}, p)), ["unexpected key foo"]),
    ("int-keys", _latent(lambda p, s, m: torch.save({1: torch.zeros(3)}, p)), ["state dict of named tensors"]),
    ("not-a-dict", _latent(lambda p, s, m: torch.save([torch.zeros(3)], p)), ["state dict of named tensors"]),
    ("wrong-shape", _latent(lambda p, s, m: _replace(p, s, m, **{"class_embedding.weight": torch.zeros(4, 3)})),
     ["class_embedding.weight has shape (4, 3)", "(4, 12)"]),
    ("missing-key", _latent(lambda p, s, m: torch.save({k: v for k, v in s.items() if "modulation" not in k}, p)),
     ["missing modulation"]),
    ("int-weights", _latent(lambda p, s, m: torch.save({k: v.long() for k, v in s.items()}, p)),
     ["has dtype int64"]),
    ("nan-weights", _latent(lambda p, s, m: torch.save({k: v * float("nan") for k, v in s.items()}, p)),
     ["NaN or infinite"]),
    ("hostile-config", lambda src, m: (src / "config.pkl").write_bytes(pickle.dumps({"cfg": Payload(m)})),
     ["config.pkl", "refusing to load global"]),
]


@pytest.mark.parametrize("damage, words", [c[1:] for c in IMPORT_CASES], ids=[c[0] for c in IMPORT_CASES])
def test_import_reference_refuses_with_one_line(cli, base, tmp_path, damage, words):
    src, marker = tmp_path / "ref", tmp_path / MARKER
    write_reference_dir(src, reference_config())
    arg = damage(src, marker)  # the damaged path to pass, where it is not the dir itself
    r = cli("import-reference", arg if isinstance(arg, Path) else src, "--model-name", "imp")
    line = one_line_error(r)
    assert r.exit_code == 2, r.output
    assert "warning" not in r.stderr.lower() and "weights_only" not in line
    for w in words:
        assert w in line, line
    assert not marker.exists()
    assert not (base / "models").exists() or os.listdir(base / "models") == []


def test_import_reference_refuses_an_existing_model_before_reading(cli, base, tmp_path):
    (base / "models" / "imp").mkdir(parents=True)
    line = one_line_error(cli("import-reference", tmp_path / "no-such-dir", "--model-name", "imp"))
    assert "already exists" in line and "--force" in line
