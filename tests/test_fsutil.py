"""Atomic writes: files and directories renamed into place get the modes the umask gives a plain
open() or mkdir, not the private 0600/0700 of temporary names."""

from __future__ import annotations

import os
import stat

import pytest

from lordkit.errors import LordkitError
from lordkit.fsutil import atomic_write_json, atomic_write_text, current_umask, staged_dir, validate_name


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_files_follow_the_umask(tmp_path, umask):
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"k": 1})
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.json") == mode(plain) == 0o666 & ~umask


def test_staged_dirs_follow_the_umask(tmp_path, umask):
    with staged_dir(tmp_path / "out") as tmp:
        atomic_write_text(tmp / "f", "x")
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "out") == mode(tmp_path / "plain") == 0o777 & ~umask
    assert mode(tmp_path / "out" / "f") == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain"]  # no temporary names left


@pytest.mark.parametrize("name", ["ok", "a.b-c_d", "A1"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "a..b", "nl\n", "tab\t", "x" * 129, "sp ace"])
def test_names_that_would_make_odd_paths_are_refused(name):
    with pytest.raises(LordkitError, match="invalid"):
        validate_name(name)


def test_model_files_and_checkpoints_follow_the_umask(tmp_path, umask):
    import torch

    from lordkit.config import LordConfig, tiny_model
    from lordkit.modeldir import checkpoint_dir, write_checkpoint, write_random_model

    m = write_random_model(tmp_path / "m", LordConfig(model=tiny_model(32, 3, n_imgs=4, n_classes=2)))
    write_checkpoint(m, "latent", {"w": torch.zeros(3)}, {"step": 1}, {"epoch": 1})
    files = [p for p in m.rglob("*") if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".safetensors" for p in files) and (checkpoint_dir(m, "latent") / "state.pt").is_file()
    assert {p.name: mode(p) for p in files} == {p.name: 0o666 & ~umask for p in files}
    assert {mode(p) for p in m.rglob("*") if p.is_dir()} == {0o777 & ~umask}
