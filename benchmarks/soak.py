"""Soak: kill lordkit's commands with SIGKILL many times, then check what the next command finds.

Each trial kills a command either at a random moment or exactly at a fault point
(`LORDKIT_FAULT_KILL=<point>`: between two steps of a directory replacement, half of them with the
three-rename fallback forced by `LORDKIT_NO_EXCHANGE=1`; before a file's rename; after a training
stage's last checkpoint; while the last sample grid is written), runs the next command, and
records:

- train: `lordkit train`, killed up to 4 times and run again (`--resume` once a checkpoint exists,
  plain otherwise) until stage 1 has its weights; half the trials whose last kill came after the
  last checkpoint leave its weights to train-encoders;
- train-encoders: stage 2 of that model the same way (it writes stage 1's weights first where they
  are missing); half the trials killed after the last checkpoint leave its weights to `export`;
- preprocess, export: `--force` replacements of a dataset and of an export;
- split: `split-samples` / `split-classes --force` (alternately, a new seed each time) of one pair;
- video: `lordkit transfer clip.mp4 --class-id N -m EXPORT -o out.mp4 --force`.

Columns:
- kills: SIGKILLs that landed (a random moment after the command ended kills nothing);
- complete: the name holds a complete copy (the dataset opens and its images read; the export
  opens with every sha256 matching; the training's weights load; the video decodes to every frame,
  right after the kill and after the next command);
- consistent: split pairs whose two parts, after the next command, are one split (the same split id,
  naming each other), hold disjoint images (and for split-classes disjoint classes) and together
  every image of the input;
- stale: hidden temporary names left after the next command (must be 0); a stage 1 left to
  train-encoders is counted in the train-encoders row, whose commands open the model;
- equal: trainings whose final weights equal those of an uninterrupted run byte for byte (both
  stages' for train-encoders).

    python benchmarks/soak.py --trials 12            # summary table, JSON in benchmarks/results/

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
GROUP_POINTS = ["group-committed", "group-one-replaced", "group-all-replaced"]  # two directories as one unit
STAGE_END_POINTS = ["stage-last-checkpoint", "stage-last-grid"]  # after a training stage's last checkpoint
DATA_OPTS = ["--opt", "n_x=2", "--opt", "n_y=2", "--opt", "n_scale=1", "--opt", "n_rotation=2", "--opt", "n_hue=2",
             "--opt", "n_shapes=3"]
LATENT_EPOCHS, AMORTIZED_EPOCHS = 4, 2
TRAIN = ["--set", "model.content_dim=8", "--set", "model.class_dim=8", "--set", "model.n_adain_layers=2",
         "--set", "model.adain_dim=16", "--set", "model.gen_last_dim=8", "--set", "latent.batch_size=16",
         "--set", "latent.loss=l1", "--set", "latent.log_every=1", "--set", "amortized.batch_size=16",
         "--set", "amortized.loss=l1", "--epochs", str(LATENT_EPOCHS), "--device", "cpu", "--no-tensorboard"]
ENCODERS = ["--epochs", str(AMORTIZED_EPOCHS), "--device", "cpu", "--no-tensorboard"]
KINDS = ("train", "train-encoders", "preprocess", "export", "split", "video")
MAX_KILLS = 4  # per training trial; then it runs to its end
VIDEO_FRAMES = 24


def lordkit(home: Path, *args: str, env: dict | None = None, kill_after: float | None = None) -> int:
    """Run a command; with kill_after, SIGKILL it after that many seconds if still running."""
    proc = subprocess.Popen([sys.executable, "-m", "lordkit", "--base-dir", str(home), *args],
                            env={**os.environ, "LORDKIT_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})},
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


def fault(rng: random.Random, duration: float, repeats: int = 1, extra: list[str] | None = None,
          ) -> tuple[dict, float | None, str]:
    """A fault point of the replacement method it belongs to (its n-th passage, n up to `repeats`: a
    training swaps its checkpoint at the end of each epoch but the first, preprocess and export
    replace once), one of `extra`
    (reached once), or a random moment within `duration` seconds."""
    if extra and rng.random() < 0.3:
        point = rng.choice(extra)
        return {"LORDKIT_FAULT_KILL": point}, None, point
    if rng.random() < 0.5:
        point = rng.choice(POINTS)
        exchange = point in EXCHANGE_POINTS or (point not in RENAME_POINTS and rng.random() < 0.5)
        env = {"LORDKIT_FAULT_KILL": f"{point}:{rng.randint(1, repeats)}"}
        if not exchange:
            env["LORDKIT_NO_EXCHANGE"] = "1"
        return env, None, env["LORDKIT_FAULT_KILL"] + ("" if exchange else " renames")
    at = rng.uniform(0.3, duration)
    return {}, at, f"at {at:.1f} s"


def same_files(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def resumable(model: Path, stage: str) -> bool:
    """A complete checkpoint under its name, or moved aside by a swap that was cut short."""
    ckpts = model / "checkpoints"
    return (ckpts / stage / "state.pt").exists() or any(p.suffix in (".new", ".old") for p in ckpts.glob(f".{stage}.*"))


def final_checkpoint(model: Path, stage: str) -> bool:
    try:
        progress = json.loads((model / "checkpoints" / stage / "progress.json").read_text())
    except (OSError, ValueError):
        return False
    return progress.get("step") == progress.get("total_steps")


def trial_train(home: Path, rng: random.Random, i: int, duration: float) -> dict:
    """Stage 1 of model t<i>, killed until it is done (or done but for its weights, left to stage 2)."""
    from lordkit.modeldir import weights_path

    model = home / "models" / f"t{i}"
    leave_weights = rng.random() < 0.5  # a run killed after its last checkpoint: train-encoders finishes it
    kills = runs = 0
    how = []
    while not weights_path(model, "latent").exists():
        if leave_weights and kills and final_checkpoint(model, "latent"):
            break
        runs += 1
        if runs > 40:
            raise RuntimeError(f"training {model.name} did not finish in 40 runs")
        mode = ["--resume"] if resumable(model, "latent") else []  # a dir with no checkpoint is started anew
        env, at, what = (fault(rng, duration, repeats=LATENT_EPOCHS - 1, extra=STAGE_END_POINTS)
                         if kills < MAX_KILLS else ({}, None, ""))
        rc = lordkit(home, "train", "-dn", "syn", "-mn", model.name, *TRAIN, *mode, env=env, kill_after=at)
        kills += rc == -signal.SIGKILL
        how.append(f"{what} {'killed' if rc else 'done'}".strip())
    if not weights_path(model, "latent").exists():  # left to train-encoders, the next command to open the model
        return {"kind": "train", "kills": kills, "how": how, "complete": final_checkpoint(model, "latent"),
                "stale": None, "equal": None}
    lordkit(home, "data", "list")
    stale = hidden(model)
    equal = same_files(weights_path(model, "latent"), weights_path(home / "models" / "whole", "latent"))
    return {"kind": "train", "kills": kills, "how": how, "complete": _loads(model, "latent"), "stale": stale,
            "equal": equal}


def trial_encoders(home: Path, rng: random.Random, i: int, duration: float) -> dict:
    """Stage 2 of model t<i> the same way; then both stages' weights against the uninterrupted run's."""
    from lordkit.modeldir import weights_path

    model, whole = home / "models" / f"t{i}", home / "models" / "whole"
    leave_weights = rng.random() < 0.5  # a run killed after its last checkpoint: export finishes it
    kills = runs = 0
    how = []
    while not weights_path(model, "amortized").exists():
        if leave_weights and kills and final_checkpoint(model, "amortized"):
            export = home / "exports" / model.name
            lordkit(home, "export", "-mn", model.name, "--no-onnx", *(["--force"] if export.exists() else []))
            how.append("export")
            break
        runs += 1
        if runs > 40:
            raise RuntimeError(f"stage 2 of {model.name} did not finish in 40 runs")
        mode = ["--resume"] if resumable(model, "amortized") else []
        env, at, what = (fault(rng, duration, repeats=AMORTIZED_EPOCHS - 1, extra=STAGE_END_POINTS)
                         if kills < MAX_KILLS else ({}, None, ""))
        rc = lordkit(home, "train-encoders", "-dn", "syn", "-mn", model.name, *ENCODERS, *mode, env=env,
                     kill_after=at)
        kills += rc == -signal.SIGKILL
        how.append(f"{what} {'killed' if rc else 'done'}".strip())
    lordkit(home, "data", "list")
    stale = hidden(model) + hidden(home / "exports")
    equal = all(same_files(weights_path(model, s), weights_path(whole, s)) for s in ("latent", "amortized"))
    return {"kind": "train-encoders", "kills": kills, "how": how, "complete": _loads(model, "amortized"),
            "stale": stale, "equal": equal}


def _loads(model: Path, stage: str) -> bool:
    from lordkit.errors import LordkitError
    from lordkit.modeldir import load_amortized, load_latent

    try:
        (load_latent if stage == "latent" else load_amortized)(model)
    except LordkitError:
        return False
    return True


def trial_preprocess(home: Path, rng: random.Random, reference: bytes, duration: float) -> dict:
    import numpy as np

    env, at, how = fault(rng, duration)
    rc = lordkit(home, "preprocess", "-di", "synthetic", "-dn", "p", "--img-size", "32", *DATA_OPTS, "--force",
                 env=env, kill_after=at)
    lordkit(home, "data", "info", "p")  # the next command; it must find a complete copy
    images = np.load(home / "data" / "p" / "images.npy", allow_pickle=False)
    return {"kind": "preprocess", "kills": int(rc == -signal.SIGKILL), "how": how,
            "complete": images.tobytes() == reference, "stale": hidden(home / "data"), "equal": None}


def trial_export(home: Path, rng: random.Random, duration: float) -> dict:
    env, at, how = fault(rng, duration)
    rc = lordkit(home, "export", "-mn", "e", "--no-torchscript", "--force", env=env, kill_after=at)
    lordkit(home, "data", "list")
    return {"kind": "export", "kills": int(rc == -signal.SIGKILL), "how": how,
            "complete": _export_opens(home / "exports" / "e"), "stale": hidden(home / "exports"), "equal": None}


def _export_opens(path: Path) -> bool:
    from lordkit.errors import LordkitError
    from lordkit.runtime.bundle import Bundle

    try:
        Bundle(path)
    except LordkitError:
        return False
    return True


def trial_split(home: Path, rng: random.Random, i: int, duration: float) -> dict:
    """split-samples or split-classes of syn into tr/ts (--force, seed i), killed; then the pair."""
    kind = "samples" if i % 2 == 0 else "classes"
    how_split = ["-ts", "0.25"] if kind == "samples" else ["-ntsi", "1"]
    env, at, how = fault(rng, duration, extra=GROUP_POINTS)
    rc = lordkit(home, f"split-{kind}", "-idn", "syn", "-trdn", "tr", "-tsdn", "ts", *how_split, "--seed", str(i + 1),
                 "--force", env=env, kill_after=at)
    lordkit(home, "data", "list")  # the next command
    complete, consistent = _pair(home / "data")
    return {"kind": "split", "kills": int(rc == -signal.SIGKILL), "how": f"{kind}: {how}", "complete": complete,
            "consistent": consistent, "stale": hidden(home / "data"), "equal": None}


def _pair(data: Path) -> tuple[bool, bool]:
    """(both parts open and read, they are one split of syn: same id, naming each other, disjoint, whole)."""
    import numpy as np

    from lordkit.data.store import Dataset
    from lordkit.errors import LordkitError

    try:
        tr, ts, parent = Dataset(data / "tr"), Dataset(data / "ts"), Dataset(data / "syn")
        parts = [(d.meta.extra.get("split") or {}, np.asarray(d.per_image["parent_index"]), np.asarray(d.class_ids),
                  np.asarray(d.images[:])) for d in (tr, ts)]
    except (LordkitError, KeyError, OSError, ValueError):
        return False, False
    (a, ia, ca, xa), (b, ib, cb, xb) = parts
    same_split = a.get("id") is not None and a.get("id") == b.get("id") and a.get("sibling") == "ts" \
        and b.get("sibling") == "tr" and (a.get("part"), b.get("part")) == ("train", "test")
    disjoint = not set(ia.tolist()) & set(ib.tolist())
    whole = sorted(ia.tolist() + ib.tolist()) == list(range(len(parent)))
    classes = a.get("kind") != "classes" or not set(ca.tolist()) & set(cb.tolist())
    images = bool((xa == np.asarray(parent.images[:])[ia]).all() and (xb == np.asarray(parent.images[:])[ib]).all())
    return True, bool(same_split and disjoint and whole and classes and images)


def trial_video(home: Path, rng: random.Random, i: int, duration: float) -> dict:
    """Video transfer into out.mp4 (--force), killed at a random moment; then the same, to its end."""
    out = home / "video" / "out.mp4"
    def args(class_id: int) -> list[str]:
        return ["transfer", str(home / "clip.mp4"), "--class-id", str(class_id), "-m", str(home / "exports" / "v"),
                "-o", str(out), "--force"]

    at = rng.uniform(0.2, duration)
    rc = lordkit(home, *args(i % 3), kill_after=at)
    after_kill = not out.exists() or _plays(out)  # the old complete file, the new one, or none yet
    lordkit(home, *args(0))  # the next command
    return {"kind": "video", "kills": int(rc == -signal.SIGKILL), "how": f"at {at:.1f} s",
            "complete": after_kill and _plays(out), "stale": hidden(out.parent), "equal": None}


def _plays(path: Path) -> bool:
    """The file decodes to every frame of the clip."""
    import av

    try:
        with av.open(str(path)) as c:
            return sum(1 for _ in c.decode(video=0)) == VIDEO_FRAMES
    except (av.error.FFmpegError, OSError, StopIteration):
        return False


def write_clip(path: Path) -> Path:
    """A 64x48 clip of VIDEO_FRAMES frames: a bar sweeping over grey."""
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(VIDEO_FRAMES):
            img = np.full((48, 64, 3), 60, np.uint8)
            img[:, 2 * k:2 * k + 8] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for kind in (*KINDS, "all"):
        rs = [r for r in rows if kind in ("all", r["kind"])]
        pairs = [r for r in rs if "consistent" in r]
        trainings = [r for r in rs if r["equal"] is not None]
        summary[kind] = {"trials": len(rs), "kills": sum(r["kills"] for r in rs),
                         "kills_after_last_checkpoint": sum(h.startswith(tuple(STAGE_END_POINTS)) and h.endswith("killed")
                                                            for r in rs if isinstance(r["how"], list) for h in r["how"]),
                         "complete": sum(bool(r["complete"]) for r in rs),
                         "consistent": sum(bool(r["consistent"]) for r in pairs) if pairs else None,
                         "stale": sum(r["stale"] or 0 for r in rs),
                         "equal": sum(bool(r["equal"]) for r in trainings) if trainings else None,
                         "equal_of": len(trainings) if trainings else None}
    return summary


def table(summary: dict) -> str:
    def cell(v, of=None):
        return "-" if v is None else (f"{v}/{of}" if of is not None else str(v))

    lines = [f"{'command':<15}{'trials':>7}{'kills':>7}{'complete':>10}{'consistent':>12}{'stale':>7}{'equal':>8}"]
    for kind, s in summary.items():
        lines.append(f"{kind:<15}{s['trials']:>7}{s['kills']:>7}{s['complete']:>10}{cell(s['consistent']):>12}"
                     f"{s['stale']:>7}{cell(s['equal'], s['equal_of']):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the soak; `record`: also append the summary to the result file (what the script does)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12, help="Trials per command (train, train-encoders, preprocess, "
                    "export, split, video).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    start = time.monotonic()

    from lordkit.config import LordConfig, tiny_model
    from lordkit.modeldir import write_random_model

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t_pre = timed(lambda: lordkit(home, "preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32",
                                      *DATA_OPTS))
        lordkit(home, "preprocess", "-di", "synthetic", "-dn", "p", "--img-size", "32", *DATA_OPTS)
        import numpy as np

        reference = np.load(home / "data" / "p" / "images.npy").tobytes()
        t_split = timed(lambda: lordkit(home, "split-samples", "-idn", "syn", "-trdn", "tr", "-tsdn", "ts",
                                        "-ts", "0.25"))
        t_train = timed(lambda: lordkit(home, "train", "-dn", "syn", "-mn", "whole", *TRAIN))
        t_enc = timed(lambda: lordkit(home, "train-encoders", "-dn", "syn", "-mn", "whole", *ENCODERS))
        cfg = LordConfig(model=tiny_model(32, 3, n_imgs=12, n_classes=3))
        write_random_model(home / "models" / "e", cfg)
        write_random_model(home / "models" / "v", cfg, class_code_range=1.0)
        t_export = timed(lambda: lordkit(home, "export", "-mn", "e", "--no-torchscript"))
        lordkit(home, "export", "-mn", "v", "--no-torchscript")
        write_clip(home / "clip.mp4")
        (home / "video").mkdir()
        t_video = timed(lambda: lordkit(home, "transfer", str(home / "clip.mp4"), "--class-id", "0", "-m",
                                        str(home / "exports" / "v"), "-o", str(home / "video" / "out.mp4")))
        rows = []
        for i in range(args.trials):
            for trial in (lambda: trial_train(home, rng, i, t_train), lambda: trial_encoders(home, rng, i, t_enc),
                          lambda: trial_preprocess(home, rng, reference, t_pre),
                          lambda: trial_export(home, rng, t_export), lambda: trial_split(home, rng, i, t_split),
                          lambda: trial_video(home, rng, i, t_video)):
                row = trial()
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    summary = summarize(rows)
    print(table(summary))
    print(f"kills after a stage's last checkpoint: {summary['all']['kills_after_last_checkpoint']}")
    seconds = {"preprocess": t_pre, "split": t_split, "train": t_train, "train-encoders": t_enc, "export": t_export,
               "video": t_video, "total": time.monotonic() - start}
    atomic_write_json(args.out, {"summary": summary, "trials": rows, "seed": args.seed, "seconds": seconds})
    figures = {"summary": summary, "seed": args.seed, "seconds": seconds, "json": str(args.out)}
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('soak', figures, args=args, argv=argv)}")
    return figures


if __name__ == "__main__":
    main(record=True)
