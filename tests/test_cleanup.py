"""The clean-up of dead processes' leftovers touches only names lordkit made and can prove: the full
temporary form `.<name>.<pid>@<host>-<8 chars>.<kind>` with this host's tag, a pid that is not
running, and the file type its kind makes. A user's files that merely look like leftovers (an older
release's `.<name>.old-<digits>`, another tool's `.x.png.123.tmp`, another host's tag, a live pid)
stay as they are, in a transfer's `-o` directory and in the base dir. And an export written with
`-o DIR` and killed outside the base dir is cleared by the next export to DIR.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import make_export, make_model_dir

from lordkit.fsutil import _host_tag, recover

DEAD = 999_999_999  # above any pid_max: no such process


def user_files(host: str) -> dict[str, str]:
    """Names a user (or another host's lordkit) may have, and what each is: 'dir', 'file' or 'link'."""
    return {
        ".photos.old-999999": "dir",  # an older release's moved-aside form, without a host
        ".notes.old-20240101": "file",
        ".x.png.123.tmp": "file",
        f".x.png.{DEAD}@000000-abcdefgh.tmp": "file",  # another host's tag
        f".photos.{DEAD}@000000-abcdefgh.partial": "dir",
        f".x.png.{os.getpid()}@{host}-abcdefgh.tmp": "file",  # a live process (this test)
        f".photos.{os.getpid()}@{host}-abcdefgh.partial": "dir",
        f".notes.{DEAD}@{host}-abcdefgh.partial": "file",  # a kind that is always a directory, as a file
        f".notes.{DEAD}@{host}-abcdefgh.group": "dir",  # a kind that is always a file, as a directory
        f".y.png.{DEAD}@{host}-abcdefgh.tmp": "link",  # lordkit never makes links
        f".z.png.{DEAD}@{host}-ABCDEFGH.tmp": "file",  # not the characters tempfile draws from
        f".z.png.{DEAD}@{host}-abcdefghij.tmp": "file",  # nor that many
    }


def plant(d: Path) -> dict[str, object]:
    """Put the look-alikes and one real dead leftover of lordkit's in `d`; returns a snapshot."""
    d.mkdir(parents=True, exist_ok=True)
    for name, kind in user_files(_host_tag()).items():
        path = d / name
        if kind == "dir":
            path.mkdir()
            (path / "keep.txt").write_text(f"mine: {name}")
        elif kind == "file":
            path.write_text(f"mine: {name}")
        else:
            path.symlink_to(d / ".notes.old-20240101")
    (d / f".x.png.{DEAD}@{_host_tag()}-abcdefgh.tmp").write_bytes(b"half a png")  # lordkit's own: goes
    return snapshot(d)


def snapshot(d: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in user_files(_host_tag()):
        path = d / name
        if path.is_symlink():
            out[name] = ("link", os.readlink(path))
        elif path.is_dir():
            out[name] = ("dir", sorted((p.name, p.read_text()) for p in path.iterdir()))
        elif path.exists():
            out[name] = ("file", path.read_text())
    return out


def assert_kept(d: Path, before: dict[str, object], own_removed: bool = True) -> None:
    assert snapshot(d) == before and len(before) == len(user_files(_host_tag()))
    own = d / f".x.png.{DEAD}@{_host_tag()}-abcdefgh.tmp"
    assert own.exists() != own_removed, "lordkit's own dead leftover " + ("stays" if own_removed else "went")
    for restored in ("photos", "notes", "x.png", "y.png", "z.png"):
        assert not (d / restored).exists(), f"{restored} was made from a user's file"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cleanup")
    model = make_model_dir(root / "model", img_size=32, channels=3, n_classes=3)
    return make_export(model, root / "export", onnx=True, torchscript=False, batch_sizes=(2,))


def photo(path: Path) -> Path:
    import cv2

    assert cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    return path


def test_recover_leaves_every_look_alike_and_removes_its_own(tmp_path):
    before = plant(tmp_path)
    assert recover(tmp_path) == []
    assert_kept(tmp_path, before)


def test_transfer_into_a_users_directory_keeps_their_files(export, tmp_path, cli):
    out = tmp_path / "DIR"
    before = plant(out)
    result = cli("transfer", photo(tmp_path / "in.png"), "-m", export, "--class-id", "0", "-o", out / "result.png")
    assert result.exit_code == 0, result.output
    assert (out / "result.png").is_file()
    assert_kept(out, before)


def test_commands_on_the_base_dir_keep_look_alikes_there(export, base, tmp_path, cli):
    import shutil

    shutil.copytree(export, base / "exports" / "e")
    befores = {sub: plant(base / sub) for sub in ("data", "models", "exports")}
    inside = plant(base / "exports" / "e")  # opening an export recovers inside it too
    assert cli("data", "list").exit_code == 0
    result = cli("transfer", photo(tmp_path / "in.png"), "-m", "e", "--class-id", "1", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    for sub, before in befores.items():
        assert_kept(base / sub, before)
    assert_kept(base / "exports" / "e", inside)


def lordkit(base: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args],
                          env={**os.environ, "LORDKIT_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("point,exchange", [("replace-moved-old", False)])
def test_an_export_killed_outside_the_base_dir_is_cleared_by_the_next_export_there(base, tmp_path, point, exchange):
    make_model_dir(base / "models" / "m")
    outside = tmp_path / "elsewhere"
    out = make_export(base / "models" / "m", outside / "exp", onnx=True, torchscript=False)
    user = plant(outside)
    env = {"LORDKIT_FAULT_KILL": point, **({} if exchange else {"LORDKIT_NO_EXCHANGE": "1"})}
    killed = lordkit(base, "export", "-mn", "m", "--no-torchscript", "-o", str(out), "--force", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert any(p.name.startswith(".exp.") for p in outside.iterdir())
    again = lordkit(base, "export", "-mn", "m", "--no-torchscript", "-o", str(out))  # refused: it exists (again)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and "already exists" in lines[0], again.stderr
    assert not any(p.name.startswith(".exp.") for p in outside.iterdir())
    assert_kept(outside, user, own_removed=False)  # the export clears its own name's leftovers only
    from lordkit.runtime.bundle import Bundle

    Bundle(out)  # complete: every file with the sha256 its manifest records
