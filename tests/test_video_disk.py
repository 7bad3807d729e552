"""A video output that cannot be written whole (full disk, file-size limit) is one error line naming
the output, exit status 2, and nothing left behind: no file at the name, no hidden temporary folder.

`lordkit transfer` runs as a subprocess: the file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored, so a
write past it fails with EFBIG as a full disk fails with ENOSPC) applies to that process only. Where
this process may mount (root on Linux), a small tmpfs gives the real ENOSPC too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import make_export, make_model_dir

pytest.importorskip("av")
from test_video import bar_frames, probe, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 120  # a bound against hanging, not a speed requirement


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("video-disk")
    model = make_model_dir(root / "model", img_size=32, channels=1, n_classes=2, class_names=["a", "b"])
    export = make_export(model, root / "export", torchscript=False, batch_sizes=(2,))
    return export, write_video(root / "clip.mkv", bar_frames(300, 160, 120), audio="aac")


def transfer(export: Path, src: Path, out: Path, *extra: str, fsize_bytes: int | None = None,
             block_av: bool = False):
    def limit() -> None:  # in the child, before exec
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))

    env = dict(os.environ, LORDKIT_OFFLINE="1", COLUMNS="200", PYTHONDONTWRITEBYTECODE="1")
    code = ("import sys\n" + ("sys.modules['av'] = None\n" if block_av else "")
            + "from lordkit.cli.app import main\nmain(sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", code, "transfer", str(src), "--class-id", "0", "-m",
                           str(export), "-o", str(out), "--size", "256", *extra],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=RUN_TIMEOUT_S,
                          preexec_fn=limit if fsize_bytes is not None else None)


def assert_refused_cleanly(r: subprocess.CompletedProcess, out: Path, why: str, warnings: int = 0) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert lines[warnings:] == [f"error: {out}: {why}"], r.stderr[-3000:]
    assert all(line.startswith("warning: ") for line in lines[:warnings]), r.stderr[-3000:]
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="RLIMIT_FSIZE in a child process")
@pytest.mark.parametrize("limit_kb", [0, 48], ids=["nothing-fits", "fills-part-way"])
def test_file_size_limit_is_one_error_line_and_no_leftovers(setup, tmp_path, limit_kb):
    export, src = setup
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "v.mp4"
    r = transfer(export, src, out, fsize_bytes=limit_kb * 1024)
    assert_refused_cleanly(r, out, "file too large for the filesystem or the process's file-size limit")
    # The same run without the limit writes the whole video (the limit was what stopped it).
    r = transfer(export, src, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert probe(out)["n"] == 300 and out.stat().st_size > 64 * 1024


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 KB tmpfs (the clip's output is about 100 KB), or a skip where this process may not mount one."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    where = tmp_path / "small"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_is_one_error_line_not_a_crash(setup, tmpfs):
    export, src = setup
    out = tmpfs / "v.mp4"
    # The disk fills part-way through the video.
    assert_refused_cleanly(transfer(export, src, out), out, "no space left on the device")
    # The disk is full before the run starts: libavformat failed its header, then crashed (exit 139).
    filler = tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    r = transfer(export, src, out)
    filler.unlink()
    assert_refused_cleanly(r, out, "no space left on the device")


def test_full_disk_without_pyav_is_an_error_too(setup, tmpfs):
    """OpenCV's writer reports nothing; the cut file would read back with all its frames in the header."""
    export, src = setup
    out = tmpfs / "v.mp4"
    r = transfer(export, src, out, block_av=True)
    assert_refused_cleanly(r, out, "no space left on the device", warnings=1)  # the fallback's own warning
