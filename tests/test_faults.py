"""Fault injection: processes killed with SIGKILL between the steps of a replacement and at random
moments; the name keeps a complete copy, the next command removes every leftover, and training
resumed after kills ends with the weights of an uninterrupted run.

`LORDKIT_FAULT_KILL=<point>[:<n>]` makes a process kill itself the n-th time it reaches a point of
lordkit.fsutil; `LORDKIT_NO_EXCHANGE=1` forces the fallback replacement (three renames) that
filesystems without renameat2(RENAME_EXCHANGE) get.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lordkit.fsutil import recover, recover_tree, staged_dir

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from test_training import TINY_DATA, TINY_SET  # noqa: E402

DATA_OPTS = [a for k, v in TINY_DATA.items() for a in ("--opt", f"{k}={v}")]


def hidden(parent: Path) -> list[str]:
    """Every hidden name under `parent`, recursively (the training lock excepted)."""
    return sorted(str(p.relative_to(parent)) for p in parent.rglob(".*") if p.name != ".lock")


def run_killed(code: str, env: dict[str, str]) -> None:
    """Run `code` in a fresh interpreter that must die by SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)


def make_copy(d: Path, tag: str) -> None:
    d.mkdir(parents=True)
    (d / "a.txt").write_text(tag)
    (d / "sub").mkdir()
    (d / "sub" / "b.bin").write_bytes(tag.encode() * 1000)


def holds_complete_copy(d: Path) -> str:
    tag = (d / "a.txt").read_text()
    assert (d / "sub" / "b.bin").read_bytes() == tag.encode() * 1000
    return tag


REPLACE = """
    from pathlib import Path
    from lordkit.fsutil import staged_dir
    with staged_dir(Path({final!r}), force=True) as tmp:
        (tmp / "a.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"new" * 1000)
"""

# (fault point, whether the exchange is used, the copy the name holds once recovered)
POINTS = [
    ("staged-complete", True, "old"),
    ("replace-exchanged", True, "new"),
    ("staged-complete", False, "old"),
    ("replace-marked-new", False, "old"),
    ("replace-moved-old", False, "new"),  # the name is empty until recovery puts the new copy there
    ("replace-renamed-new", False, "new"),
]


@pytest.mark.parametrize("point,exchange,expected", POINTS, ids=[f"{p}-{'exchange' if x else 'renames'}" for p, x, _ in POINTS])
def test_replacement_killed_between_its_steps(tmp_path, point, exchange, expected):
    final = tmp_path / "out"
    make_copy(final, "old")
    env = {"LORDKIT_FAULT_KILL": point, **({} if exchange else {"LORDKIT_NO_EXCHANGE": "1"})}
    run_killed(REPLACE.format(final=str(final)), env)
    assert hidden(tmp_path), "the kill should leave a temporary name behind"
    recover(tmp_path)
    assert holds_complete_copy(final) == expected
    assert hidden(tmp_path) == []


def test_file_write_killed_before_its_rename_keeps_the_old_file(tmp_path):
    target = tmp_path / "m" / "config.json"
    target.parent.mkdir()
    target.write_text("old")
    run_killed(f"""
        from lordkit.fsutil import atomic_write_text
        atomic_write_text({str(target)!r}, "new")
    """, {"LORDKIT_FAULT_KILL": "file-before-rename"})
    assert target.read_text() == "old" and hidden(tmp_path) == [f"m/{name}" for name in sorted(os.listdir(target.parent)) if name.startswith(".")]
    assert len(hidden(tmp_path)) == 1
    recover_tree(target.parent)
    assert target.read_text() == "old" and hidden(tmp_path) == []


def test_live_processes_keep_their_temporary_names(tmp_path):
    final = tmp_path / "out"
    with staged_dir(final) as tmp:
        (tmp / "x").write_text("x")
        recover(tmp_path)  # our own staging dir: this process is alive
        assert tmp.is_dir()
    assert (final / "x").read_text() == "x" and hidden(tmp_path) == []
    # A name of another host is never judged by pid.
    foreign = tmp_path / ".out.1@000000-abcdefgh.partial"
    foreign.mkdir()
    recover(tmp_path)
    assert foreign.is_dir()


def test_names_without_this_hosts_tag_are_never_recovered_or_removed(tmp_path):
    # The previous release's moved-aside form carries no host: it cannot be told from a user's folder.
    make_copy(tmp_path / ".out.old-999999999", "old")  # no such pid
    recover(tmp_path)
    assert not (tmp_path / "out").exists() and holds_complete_copy(tmp_path / ".out.old-999999999") == "old"


# ---------------------------------------------------------------------------------------------
# The commands.


def lordkit(base: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args],
                          env={**os.environ, "LORDKIT_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_preprocess_killed_inside_its_replacement_then_the_next_command_repairs(base):
    lordkit(base, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS)
    before = (base / "data" / "syn" / "images.npy").read_bytes()
    killed = lordkit(base, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS,
                     "--force", env={"LORDKIT_NO_EXCHANGE": "1", "LORDKIT_FAULT_KILL": "replace-moved-old"},
                     check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (base / "data" / "syn").exists() and len(hidden(base / "data")) == 2  # new + old, both complete
    info = lordkit(base, "data", "info", "syn")
    assert "syn" in info.stdout
    assert (base / "data" / "syn" / "images.npy").read_bytes() == before  # the same render, either copy
    assert hidden(base / "data") == []


def test_preprocess_killed_at_random_leaves_nothing_after_the_next_command(base):
    args = ("preprocess", "-di", "synthetic", "-dn", "big", "--img-size", "32",
            "--opt", "n_x=6", "--opt", "n_y=6", "--opt", "n_hue=4")
    proc = subprocess.Popen([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list((base / "data").glob(".big.*")):
        time.sleep(0.02)
    time.sleep(random.Random(0).uniform(0, 0.3))
    proc.kill()
    proc.wait()
    lordkit(base, "data", "list")
    assert hidden(base / "data") == []


def test_sigterm_stops_preprocess_with_one_line_and_no_partial(base):
    proc = subprocess.Popen([sys.executable, "-m", "lordkit", "--base-dir", str(base), "preprocess", "-di",
                             "synthetic", "-dn", "big", "--img-size", "64", "--opt", "n_x=10", "--opt", "n_y=10",
                             "--opt", "n_hue=8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list((base / "data").glob(".big.*")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("preprocess finished before the signal arrived")
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("preprocess")]
    assert lines == ["error: terminated (SIGTERM); nothing was left half-written"], err
    assert not (base / "data" / "big").exists() and hidden(base / "data") == []


def test_training_killed_at_random_and_in_its_checkpoint_swap_resumes_to_the_same_weights(base):
    from safetensors.torch import load_file

    lordkit(base, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS)
    train = ("train", "-dn", "syn", *TINY_SET, "--epochs", "20", "--device", "cpu", "--no-tensorboard")
    lordkit(base, *train, "-mn", "whole")
    model = base / "models" / "m"
    faults = [{"LORDKIT_NO_EXCHANGE": "1", "LORDKIT_FAULT_KILL": "replace-moved-old:2"},
              {"LORDKIT_FAULT_KILL": "replace-exchanged:2"}]
    rng = random.Random(1)
    runs, outcomes = 0, []
    while not (model / "latent.safetensors").exists():
        runs += 1
        assert runs < 12, "training did not finish"
        resume = ["--resume"] if resumable(model) else (["--force"] if model.exists() else [])
        cmd = [sys.executable, "-m", "lordkit", "--base-dir", str(base), *train, "-mn", "m", *resume]
        env = {**os.environ, "LORDKIT_OFFLINE": "1", **(faults.pop(0) if faults else {})}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if "LORDKIT_FAULT_KILL" not in env and runs < 6:
            kill_mid_training(proc, model / "metrics.jsonl", rng.randint(1, 12), rng.uniform(0, 0.05))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err
        outcomes.append(proc.returncode)
    assert outcomes.count(-signal.SIGKILL) >= 3, outcomes
    got, want = load_file(model / "latent.safetensors"), load_file(base / "models" / "whole" / "latent.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    lordkit(base, "data", "list")
    assert hidden(base / "models") == [] and hidden(base / "data") == []


def kill_mid_training(proc: subprocess.Popen, metrics: Path, steps: int, delay: float) -> None:
    """SIGKILL `proc` a random moment after it logged `steps` more training steps: counted from the
    run's own progress, not the clock, so the kill lands mid-training on a fast machine or a busy one."""
    def stamp():
        try:
            st = metrics.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    seen, last = 0, stamp()
    while proc.poll() is None and seen < steps:
        now = stamp()
        seen, last = seen + (now != last), now
        time.sleep(0.001)
    time.sleep(delay)
    if proc.poll() is None:
        proc.kill()


def resumable(model: Path) -> bool:
    """A complete checkpoint under its name, or moved aside by a swap that was cut short."""
    ckpts = model / "checkpoints"
    return (ckpts / "latent" / "state.pt").exists() or any(
        p.suffix in (".new", ".old") for p in ckpts.glob(".latent.*"))


def test_export_killed_inside_its_replacement_keeps_a_complete_export(base):
    sys.path.insert(0, str(HERE))
    from factories import make_export, make_model_dir

    make_model_dir(base / "models" / "m")
    make_export(base / "models" / "m", base / "exports" / "m", onnx=True, torchscript=False)
    killed = lordkit(base, "export", "-mn", "m", "--no-torchscript", "--force",
                     env={"LORDKIT_NO_EXCHANGE": "1", "LORDKIT_FAULT_KILL": "replace-moved-old"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (base / "exports" / "m").exists()
    from lordkit.runtime.bundle import Bundle

    lordkit(base, "data", "list")  # any command that opens the base dir repairs it
    Bundle(base / "exports" / "m")  # every file present with the sha256 its manifest records
    assert hidden(base / "exports") == []


def test_transfer_clears_what_a_killed_transfer_left_beside_its_output(base, tmp_path):
    import numpy as np
    from factories import make_export, make_model_dir

    from lordkit.fsutil import _host_tag
    from lordkit.viz import save_png

    make_model_dir(tmp_path / "model")
    export = make_export(tmp_path / "model", tmp_path / "export", onnx=True, torchscript=False)
    save_png(tmp_path / "in.png", (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3))
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".in__class00.png.999999999@{_host_tag()}-abcdefgh.tmp"  # no such pid on this host
    dead.write_bytes(b"half a png")
    lordkit(base, "transfer", str(tmp_path / "in.png"), "-m", str(export), "--class-id", "0", "--class-id", "1",
            "-o", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["in__class00.png", "in__class01.png"]
