"""Soak: kill `train`, `preprocess --force` and `export --force` with SIGKILL many times, then check.

Each trial kills a command either at a random moment or exactly between two steps of a directory
replacement (`LORDKIT_FAULT_KILL=<point>`, half of them with the three-rename fallback forced by
`LORDKIT_NO_EXCHANGE=1`), runs the next command, and records:

- complete: the name holds a complete copy (the dataset opens and its images read; the export opens
  with every sha256 matching; training resumes);
- stale: hidden temporary names left after the next command (must be 0);
- equal: for training, killed again and again until it finishes, whether the final weights equal
  those of an uninterrupted run bit for bit.

    python benchmarks/soak.py --trials 20            # summary table, JSON in benchmarks/results/

Every trial goes to benchmarks/results/soak.json (--out); run as a script, the summary is also appended
as one line to benchmarks/results/soak.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR appends
to DIR/soak.jsonl instead).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lordkit.fsutil import atomic_write_json

POINTS = ["staged-complete", "replace-exchanged", "replace-marked-new", "replace-moved-old", "replace-renamed-new",
          "file-before-rename"]
EXCHANGE_POINTS = ("replace-exchanged",)  # reached only when the filesystem exchanges
RENAME_POINTS = ("replace-marked-new", "replace-moved-old", "replace-renamed-new")  # only by the fallback
DATA_OPTS = ["--opt", "n_x=2", "--opt", "n_y=2", "--opt", "n_scale=1", "--opt", "n_rotation=2", "--opt", "n_hue=2",
             "--opt", "n_shapes=3"]
TRAIN = ["--set", "model.content_dim=8", "--set", "model.class_dim=8", "--set", "model.n_adain_layers=2",
         "--set", "model.adain_dim=16", "--set", "model.gen_last_dim=8", "--set", "latent.batch_size=16",
         "--set", "latent.loss=l1", "--set", "latent.log_every=1", "--device", "cpu", "--no-tensorboard"]


def lordkit(home: Path, *args: str, env: dict | None = None, kill_after: float | None = None) -> int:
    """Run a command; with kill_after, SIGKILL it after that many seconds if still running."""
    proc = subprocess.Popen([sys.executable, "-m", "lordkit", "--base-dir", str(home), *args],
                            env={**os.environ, "LORDKIT_OFFLINE": "1", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"lordkit {' '.join(args)} failed ({proc.returncode}): {err.strip()[-400:]}")
    return proc.returncode


def hidden(parent: Path) -> int:
    return sum(1 for p in parent.rglob(".*") if p.name != ".lock") if parent.exists() else 0


def fault(rng: random.Random, duration: float, repeats: int = 1) -> tuple[dict, float | None, str]:
    """A fault point of the replacement method it belongs to (its n-th passage, n up to `repeats`: a
    training swaps its checkpoint each epoch, preprocess and export replace once), or a random moment
    within `duration` seconds."""
    if rng.random() < 0.5:
        point = rng.choice(POINTS)
        exchange = point in EXCHANGE_POINTS or (point not in RENAME_POINTS and rng.random() < 0.5)
        env = {"LORDKIT_FAULT_KILL": f"{point}:{rng.randint(1, repeats)}"}
        if not exchange:
            env["LORDKIT_NO_EXCHANGE"] = "1"
        return env, None, env["LORDKIT_FAULT_KILL"] + ("" if exchange else " renames")
    at = rng.uniform(0.3, duration)
    return {}, at, f"at {at:.1f} s"


def trial_train(home: Path, rng: random.Random, i: int, duration: float) -> dict:
    from safetensors.numpy import load_file

    model = home / "models" / f"t{i}"
    kills = runs = 0
    while not (model / "latent.safetensors").exists():
        runs += 1
        if runs > 40:
            raise RuntimeError(f"training {model.name} did not finish in 40 runs")
        ckpts = model / "checkpoints"
        resumable = (ckpts / "latent" / "state.pt").exists() or any(
            p.suffix in (".new", ".old") for p in ckpts.glob(".latent.*"))
        mode = ["--resume"] if resumable else (["--force"] if model.exists() else [])
        env, at, _ = fault(rng, duration, repeats=3) if kills < 4 else ({}, None, "")
        rc = lordkit(home, "train", "-dn", "syn", "-mn", model.name, *TRAIN, "--epochs", "20", *mode, env=env,
                     kill_after=at)
        kills += rc == -signal.SIGKILL
    got, want = load_file(model / "latent.safetensors"), load_file(home / "models" / "whole" / "latent.safetensors")
    equal = got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    lordkit(home, "data", "list")
    return {"kind": "train", "faults": kills, "complete": True, "stale": hidden(model), "equal": equal}


def trial_preprocess(home: Path, rng: random.Random, reference: bytes, duration: float) -> dict:
    import numpy as np

    env, at, how = fault(rng, duration)
    rc = lordkit(home, "preprocess", "-di", "synthetic", "-dn", "p", "--img-size", "32", *DATA_OPTS, "--force",
                 env=env, kill_after=at)
    lordkit(home, "data", "info", "p")  # the next command; it must find a complete copy
    images = np.load(home / "data" / "p" / "images.npy", allow_pickle=False)
    return {"kind": "preprocess", "faults": int(rc == -signal.SIGKILL), "how": how,
            "complete": images.tobytes() == reference, "stale": hidden(home / "data"), "equal": None}


def trial_export(home: Path, rng: random.Random, duration: float) -> dict:
    from lordkit.errors import LordkitError
    from lordkit.runtime.bundle import Bundle

    env, at, how = fault(rng, duration)
    rc = lordkit(home, "export", "-mn", "e", "--no-torchscript", "--force", env=env, kill_after=at)
    lordkit(home, "data", "list")
    try:
        Bundle(home / "exports" / "e")
        complete = True
    except LordkitError:
        complete = False
    return {"kind": "export", "faults": int(rc == -signal.SIGKILL), "how": how, "complete": complete,
            "stale": hidden(home / "exports"), "equal": None}


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the soak; `record`: also append the summary to the result file (what the script does)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12, help="Trials per command (train, preprocess, export).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    from lordkit.config import LordConfig, tiny_model
    from lordkit.modeldir import write_random_model

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t_pre = timed(lambda: lordkit(home, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32",
                                      *DATA_OPTS))
        lordkit(home, "preprocess", "-di", "synthetic", "-dn", "p", "--img-size", "32", *DATA_OPTS)
        import numpy as np

        reference = np.load(home / "data" / "p" / "images.npy").tobytes()
        t_train = timed(lambda: lordkit(home, "train", "-dn", "syn", "-mn", "whole", *TRAIN, "--epochs", "20"))
        write_random_model(home / "models" / "e", LordConfig(model=tiny_model(32, 3, n_imgs=12, n_classes=3)))
        t_export = timed(lambda: lordkit(home, "export", "-mn", "e", "--no-torchscript"))
        rows = []
        for i in range(args.trials):
            for row in (trial_train(home, rng, i, t_train), trial_preprocess(home, rng, reference, t_pre),
                        trial_export(home, rng, t_export)):
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)

    print(f"{'command':<11}{'trials':>7}{'faults':>8}{'complete':>10}{'stale':>7}{'equal':>7}")
    summary = {}
    for kind in ("train", "preprocess", "export"):
        rs = [r for r in rows if r["kind"] == kind]
        s = {"trials": len(rs), "faults": sum(r["faults"] for r in rs),
             "complete": sum(bool(r["complete"]) for r in rs), "stale": sum(r["stale"] for r in rs),
             "equal": sum(bool(r["equal"]) for r in rs) if kind == "train" else None}
        summary[kind] = s
        eq = "-" if s["equal"] is None else str(s["equal"])
        print(f"{kind:<11}{s['trials']:>7}{s['faults']:>8}{s['complete']:>10}{s['stale']:>7}{eq:>7}")
    seconds = {"preprocess": t_pre, "train": t_train, "export": t_export}
    atomic_write_json(args.out, {"summary": summary, "trials": rows, "seed": args.seed, "seconds": seconds})
    figures = {"summary": summary, "seed": args.seed, "seconds": seconds, "json": str(args.out)}
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('soak', figures, args=args, argv=argv)}")
    return figures


if __name__ == "__main__":
    main(record=True)
