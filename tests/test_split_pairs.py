"""The two parts of a split are one unit: `split-samples --force` / `split-classes --force` killed at
any instant leave the old pair or the new pair once the next command has run, never the test part of
one split beside the train part of another; a pair mixed anyway is refused when a part is opened.

The kills are real: a `lordkit split-* --force` subprocess SIGKILLs itself at a fault point of
lordkit.fsutil (LORDKIT_FAULT_KILL), or is killed from outside at a random moment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from lordkit.data.splits import split_classes, split_samples
from lordkit.data.store import Dataset, DatasetMeta, StoreWriter
from lordkit.errors import LordkitError
from lordkit.fsutil import recover

N_CLASSES = 6


def write_dataset(path: Path, n_imgs: int, size: int = 8) -> Dataset:
    """A dataset store in the real format: random pixels, classes in turn."""
    path.mkdir(parents=True)
    writer = StoreWriter(path, size, 3)
    rng = np.random.default_rng(0)
    for start in range(0, n_imgs, 2048):
        n = min(2048, n_imgs - start)
        writer.add(rng.integers(0, 256, (n, size, size, 3), np.uint8), np.arange(start, start + n) % N_CLASSES, -1)
    writer.close(DatasetMeta(dataset_id="synthetic", class_names=[f"c{i}" for i in range(N_CLASSES)],
                             img_size=size, channels=3, n_imgs=0))
    return Dataset(path)


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def lordkit(base: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args],
                          env={**os.environ, "LORDKIT_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=300)


def pair_seed(data: Path, n_imgs: int, kind: str = "samples") -> int:
    """Open both parts as a command would and check they are one whole split; returns its seed."""
    train, test = Dataset(data / "tr"), Dataset(data / "te")
    a, b = train.meta.extra["split"], test.meta.extra["split"]
    assert a["id"] == b["id"] and a["seed"] == b["seed"] and a["kind"] == b["kind"] == kind
    assert (a["part"], a["sibling"], b["part"], b["sibling"]) == ("train", "te", "test", "tr")
    tr, te = train.per_image["parent_index"], test.per_image["parent_index"]
    assert not set(tr.tolist()) & set(te.tolist()), "test images that are also training images"
    assert sorted(tr.tolist() + te.tolist()) == list(range(n_imgs))
    want_tr, want_te = expected(n_imgs, a["seed"], kind)
    assert tr.tolist() == want_tr and te.tolist() == want_te  # the split that seed makes, whole
    return int(a["seed"])


def expected(n_imgs: int, seed: int, kind: str) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    if kind == "samples":
        perm = rng.permutation(n_imgs)
        n_test = round(n_imgs * 0.25)
        return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())
    test_classes = rng.choice(np.arange(N_CLASSES), size=2, replace=False)
    is_test = np.isin(np.arange(n_imgs) % N_CLASSES, test_classes)
    return np.flatnonzero(~is_test).tolist(), np.flatnonzero(is_test).tolist()


SPLIT_ARGS = {"samples": ("split-samples", "--test-split", "0.25"), "classes": ("split-classes", "--num-test-classes", "2")}


def split_cmd(kind: str, seed: int, force: bool = True) -> list[str]:
    command, *how = SPLIT_ARGS[kind]
    return [command, "-idn", "src", "-trdn", "tr", "-tsdn", "te", *how, "--seed", str(seed),
            *(["--force"] if force else [])]


def test_parts_carry_one_split_id_and_name_each_other(tmp_path):
    ds = write_dataset(tmp_path / "src", 60)
    split_samples(ds, tmp_path / "tr", tmp_path / "te", 0.25, seed=1)
    first = Dataset(tmp_path / "tr").meta.extra["split"]["id"]
    assert pair_seed(tmp_path, 60) == 1
    split_samples(ds, tmp_path / "tr", tmp_path / "te", 0.25, seed=1, force=True)
    assert pair_seed(tmp_path, 60) == 1 and Dataset(tmp_path / "tr").meta.extra["split"]["id"] != first
    split_classes(ds, tmp_path / "tr", tmp_path / "te", 2, seed=5, force=True)
    assert pair_seed(tmp_path, 60, "classes") == 5 and hidden(tmp_path) == []


# (fault point, whether the exchange is used, the split the pair holds once the next command ran)
POINTS = [
    ("staged-complete", True, "old"),
    ("file-before-rename:3", True, "old"),  # the journal written but not yet under its name
    ("group-committed", True, "new"),
    ("replace-exchanged:1", True, "new"),
    ("group-one-replaced", True, "new"),
    ("replace-exchanged:2", True, "new"),
    ("group-all-replaced", True, "new"),
    ("staged-complete", False, "old"),
    ("group-committed", False, "new"),
    ("replace-marked-new:1", False, "new"),
    ("replace-moved-old:1", False, "new"),
    ("replace-renamed-new:1", False, "new"),
    ("group-one-replaced", False, "new"),
    ("replace-marked-new:2", False, "new"),
    ("replace-moved-old:2", False, "new"),
    ("replace-renamed-new:2", False, "new"),
    ("group-all-replaced", False, "new"),
]


@pytest.mark.parametrize("point,exchange,outcome", POINTS,
                         ids=[f"{p}-{'exchange' if x else 'renames'}" for p, x, _ in POINTS])
def test_split_killed_at_each_fault_point_leaves_one_whole_pair(base, point, exchange, outcome):
    data = base / "data"
    n = 240
    ds = write_dataset(data / "src", n)
    split_samples(ds, data / "tr", data / "te", 0.25, seed=1)
    env = {"LORDKIT_FAULT_KILL": point, **({} if exchange else {"LORDKIT_NO_EXCHANGE": "1"})}
    killed = lordkit(base, *split_cmd("samples", 2), env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert hidden(data), "the kill should leave something to recover"
    listed = lordkit(base, "data", "list")  # the next command, whatever it is, repairs the pair
    assert listed.returncode == 0 and "unreadable" not in listed.stdout, listed.stdout + listed.stderr
    assert pair_seed(data, n) == (1 if outcome == "old" else 2)
    assert hidden(data) == []


@pytest.mark.parametrize("point", ["replace-exchanged:1", "group-one-replaced"])
def test_split_classes_killed_between_its_two_replacements_leaves_one_whole_pair(base, point):
    data = base / "data"
    ds = write_dataset(data / "src", 120)
    split_classes(ds, data / "tr", data / "te", 2, seed=1)
    killed = lordkit(base, *split_cmd("classes", 3), env={"LORDKIT_FAULT_KILL": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    info = lordkit(base, "data", "info", "te", "--json")  # opening one part finishes both
    assert info.returncode == 0, info.stderr
    assert pair_seed(data, 120, "classes") == 3 and hidden(data) == []


def start_split(base: Path, seed: int, exchange: bool) -> subprocess.Popen:
    env = {**os.environ, "LORDKIT_OFFLINE": "1", **({} if exchange else {"LORDKIT_NO_EXCHANGE": "1"})}
    return subprocess.Popen([sys.executable, "-m", "lordkit", "--base-dir", str(base), *split_cmd("samples", seed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_staging(proc: subprocess.Popen, data: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not hidden(data):
        time.sleep(0.002)


def test_split_killed_at_random_moments_always_leaves_one_whole_pair(base):
    data = base / "data"
    n = 40_000  # 7.7 MB of images: the copy takes long enough to be hit at random moments
    ds = write_dataset(data / "src", n)
    split_samples(ds, data / "tr", data / "te", 0.25, seed=1)
    # One split left to finish shows how long this machine takes from the first staged file to the
    # end; the kills fall at random moments within that span, so they land mid-split on fast and slow
    # machines alike.
    proc = start_split(base, 2, exchange=True)
    wait_for_staging(proc, data)
    start = time.monotonic()
    while proc.poll() is None:
        time.sleep(0.002)
    span = time.monotonic() - start
    assert proc.returncode == 0 and pair_seed(data, n) == 2
    rng = random.Random(7)
    seeds, outcomes = [2], []
    for trial in range(16):
        seed = trial + 3
        proc = start_split(base, seed, exchange=trial % 2 == 0)
        wait_for_staging(proc, data)
        time.sleep(rng.uniform(0, span))
        proc.kill()
        proc.wait()
        outcomes.append(proc.returncode)
        if trial % 3 == 2:
            recover(data)  # what every command does first
        else:
            assert lordkit(base, "data", "info", "tr" if trial % 3 else "te", "--json").returncode == 0
        got = pair_seed(data, n)
        assert got in (seeds[-1], seed), (got, seeds)
        seeds.append(got)
        assert hidden(data) == []
        if trial >= 7 and outcomes.count(-signal.SIGKILL) >= 4:
            break
    assert outcomes.count(-signal.SIGKILL) >= 4, (outcomes, span)


def test_a_pair_mixed_anyway_is_refused_in_one_line(base, cli):
    data = base / "data"
    ds = write_dataset(data / "src", 60)
    split_samples(ds, data / "tr", data / "te", 0.25, seed=1)
    shutil.copytree(data / "te", base / "te-seed1")
    split_samples(ds, data / "tr", data / "te", 0.25, seed=2, force=True)
    shutil.rmtree(data / "te")
    shutil.copytree(base / "te-seed1", data / "te")  # a test part of another split under the sibling's name
    for name in ("tr", "te"):
        with pytest.raises(LordkitError, match="parts of different splits"):
            Dataset(data / name)
        line = one_line_error(cli("data", "info", name))
        assert "datasets" in line and "different splits" in line and "--force" in line, line
    listed = cli("data", "list")
    assert listed.exit_code == 0 and listed.stdout.count("different splits") == 2, listed.stdout
    # Splitting again repairs it.
    assert cli(*split_cmd("samples", 3)).exit_code == 0
    assert pair_seed(data, 60) == 3


def test_a_part_whose_sibling_was_split_again_with_another_partner_still_opens(tmp_path):
    ds = write_dataset(tmp_path / "src", 60)
    split_samples(ds, tmp_path / "tr", tmp_path / "te", 0.25, seed=1)
    split_samples(ds, tmp_path / "tr", tmp_path / "te2", 0.25, seed=2, force=True)
    assert Dataset(tmp_path / "te").meta.extra["split"]["seed"] == 1  # stale, but not mixed with anything
    assert Dataset(tmp_path / "tr").meta.extra["split"]["sibling"] == "te2"
    shutil.rmtree(tmp_path / "te2")
    Dataset(tmp_path / "tr")  # a missing sibling is fine


def test_a_committed_group_of_a_live_process_is_left_alone(tmp_path):
    """Recovery judges a journal by its process: while that runs, nothing of it is touched."""
    from lordkit.fsutil import staged_dirs

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tag").write_text("old")
    with staged_dirs([tmp_path / "a", tmp_path / "b"], force=True) as tmps:
        for tmp in tmps:
            (tmp / "tag").write_text("new")
        recover(tmp_path)
        assert len(hidden(tmp_path)) == 2
    assert [(tmp_path / n / "tag").read_text() for n in "ab"] == ["new", "new"] and hidden(tmp_path) == []


def test_journal_lists_each_new_copy_by_identity(tmp_path):
    """The journal is JSON naming each part and the device and inode of its new copy."""
    code = f"""
from pathlib import Path
from lordkit.fsutil import staged_dirs
with staged_dirs([Path({str(tmp_path / 'a')!r}), Path({str(tmp_path / 'b')!r})]) as tmps:
    for t in tmps:
        (t / "x").write_text("new")
"""
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LORDKIT_FAULT_KILL": "group-committed"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    journals = [p for p in tmp_path.iterdir() if p.name.endswith(".group")]
    assert len(journals) == 1
    doc = json.loads(journals[0].read_text())
    assert [e["name"] for e in doc["entries"]] == ["a", "b"] and all("ino" in e and "dev" in e for e in doc["entries"])
    assert sorted(recover(tmp_path)) == ["a", "b"]
    assert (tmp_path / "a" / "x").read_text() == (tmp_path / "b" / "x").read_text() == "new"
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_error_between_the_two_replacements_finishes_the_pair_at_once(tmp_path, monkeypatch, error):
    """Ctrl-C (or a failed rename) after the commit point: the command stops, the pair is new."""
    from lordkit import fsutil

    ds = write_dataset(tmp_path / "src", 60)
    split_samples(ds, tmp_path / "tr", tmp_path / "te", 0.25, seed=1)
    real, calls = fsutil.replace_dir, []

    def replace_then_fail(tmp, final):
        calls.append(final.name)
        if len(calls) == 2:
            raise error(5, "interrupted") if error is OSError else error()
        real(tmp, final)

    monkeypatch.setattr(fsutil, "replace_dir", replace_then_fail)
    with pytest.raises(error):
        split_samples(ds, tmp_path / "tr", tmp_path / "te", 0.25, seed=2, force=True)
    monkeypatch.undo()
    assert calls == ["tr", "te"] and hidden(tmp_path) == []  # nothing left for the next command
    assert pair_seed(tmp_path, 60) == 2
