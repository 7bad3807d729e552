"""Does `--time-budget` hold? Each stage trained through the command line with a budget, on sets of
500 to 20,000 images, and the wall time of each command set against its budget.

For each size, in a fresh base dir (a synthetic set of that many images: five shapes, their colour a
class attribute, content on an x / y / scale / rotation grid sized to give the number of images):

    lordkit preprocess -di synthetic -dn s<N> --img-size 32 --opt n_x=.. --opt colour=class
    lordkit train -dn s<N> -mn m --time-budget <budget>
    lordkit train-encoders -dn s<N> -mn m --time-budget <budget>

Each command runs in its own process (OMP_NUM_THREADS=--threads, 1 by default: one core) and is
timed from its start to its exit (Python's start-up, the imports and the data loading included, as a
user waiting for it sees it). A row per stage: the budget, the wall time, its difference from the
budget, the epochs the plan fitted and the epochs trained (a stage that fell behind shortens itself),
the steps, and the step time the plan measured. The table goes to <out>/results.md (the rows to results.json), and the run is
appended as one JSON line to benchmarks/results/time_budget.jsonl (benchmarks/_results.py;
LORDKIT_RESULTS_DIR=DIR elsewhere).

    python benchmarks/time_budget.py --out /tmp/tb --sizes 500,20000 --budget 10m
    python benchmarks/time_budget.py --out /tmp/tb --sizes 500 --budget 40s     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMG_SIZE = 32
N_SHAPES = 5
# Content grids (x, y, scale, rotation) giving N_SHAPES x the product images.
GRIDS: dict[int, tuple[int, int, int, int]] = {
    500: (5, 5, 2, 2),
    2000: (5, 5, 4, 4),
    5000: (10, 10, 2, 5),
    20000: (10, 10, 5, 8),
}
TOLERANCE = 0.10  # a stage within 10% of its budget, either side


def grid_opts(n: int) -> list[str]:
    x, y, scale, rotation = GRIDS[n]
    opts = {"n_x": x, "n_y": y, "n_scale": scale, "n_rotation": rotation, "colour": "class"}
    return [a for k, v in opts.items() for a in ("--opt", f"{k}={v}")]


def lordkit(base: Path, args: list[str], env: dict[str, str], log: Path) -> float:
    """Run one lordkit command in base; its wall seconds. Raises with the log's tail."""
    t0 = time.monotonic()
    with open(log, "a") as out:
        out.write(f"$ lordkit {' '.join(args)}\n")
        out.flush()
        p = subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args], env=env,
                           stdout=out, stderr=subprocess.STDOUT, text=True)
    took = time.monotonic() - t0
    if p.returncode != 0:
        last = (log.read_text(errors="replace").strip().splitlines() or [""])[-1]
        raise RuntimeError(f"lordkit {args[0]} exited {p.returncode}: {last}")
    return took


def stage_row(cfg: dict[str, Any], stage: str, took_s: float, budget_s: float) -> dict[str, Any]:
    """What a stage's plan fitted and what the command took, against its budget."""
    plan = cfg[stage].get("plan") or {}
    return {"stage": stage, "budget_s": budget_s, "took_s": took_s, "off_budget": took_s / budget_s - 1,
            "within_tolerance": abs(took_s / budget_s - 1) <= TOLERANCE,
            "planned_steps": plan.get("planned_steps", plan.get("total_steps")), "steps": plan.get("total_steps"),
            "epochs": cfg[stage]["n_epochs"], "steps_per_epoch": plan.get("steps_per_epoch"),
            "step_ms": 1000 * plan.get("step_s", float("nan")), "refits": len(plan.get("refits") or [])}


def run_size(n: int, budget: str, budget_s: float, work: Path, out: Path, threads: int) -> dict[str, Any]:
    """Both stages of one set size with the same budget each; the row."""
    base = work / f"s{n}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log = out / f"s{n}.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    lordkit(base, ["preprocess", "-di", "synthetic", "-dn", f"s{n}", "--img-size", str(IMG_SIZE), *grid_opts(n)], env, log)
    s1 = lordkit(base, ["train", "-dn", f"s{n}", "-mn", "m", "--time-budget", budget], env, log)
    s2 = lordkit(base, ["train-encoders", "-dn", f"s{n}", "-mn", "m", "--time-budget", budget], env, log)
    cfg = json.loads((base / "models" / "m" / "config.json").read_text())
    meta = json.loads((base / "data" / f"s{n}" / "meta.json").read_text())
    return {"n_images": meta.get("n_imgs", n), "budget": budget,
            "stages": [stage_row(cfg, "latent", s1, budget_s), stage_row(cfg, "amortized", s2, budget_s)]}


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [f"{header['cpu']}, {header['threads']} thread(s) per command, torch {header['torch']}, "
             f"commit {header['commit'][:10]}", "",
             "| images | stage | budget | command took | off budget | steps planned / trained | epochs | step | refits |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n_images']:,} | failed: {r['error']} | | | | | | | |")
            continue
        for s in r["stages"]:
            lines.append(f"| {r['n_images']:,} | {s['stage']} | {r['budget']} | {s['took_s']:.0f} s "
                         f"| {s['off_budget']:+.1%} | {s['planned_steps']:,} / {s['steps']:,} "
                         f"| {s['epochs']} of {s['steps_per_epoch']:,} steps | {s['step_ms']:.0f} ms | {s['refits']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, *, record: bool = False) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Folder for results.md and the logs.")
    ap.add_argument("--sizes", default="500,20000",
                    help=f"Comma-separated numbers of images, of: {', '.join(map(str, GRIDS))}.")
    ap.add_argument("--budget", default="10m", help="Time budget of each stage (--time-budget's form: 10m, 90s).")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every command (1: one core).")
    ap.add_argument("--work-dir", type=Path, default=None, help="Keep the base dirs here (default: a temp dir).")
    args = ap.parse_args(argv)
    from lordkit.training.budget import parse_duration

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        budget_s = parse_duration(args.budget, flag="--budget")
    except ValueError as e:
        ap.error(str(e))
    for n in sizes:
        if n not in GRIDS:
            ap.error(f"no grid for {n} images; choose from {', '.join(map(str, GRIDS))}")
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    header = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
              "commit": "unknown", "tolerance": TOLERANCE}
    if record:
        from _results import _commit, machine  # benchmarks/_results.py, found beside this script when it runs as one

        header.update(cpu=machine()["cpu"], commit=_commit() or "unknown")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lordkit-time-budget-") as tmp:
        work = args.work_dir or Path(tmp)
        for n in sizes:
            try:
                row = run_size(n, args.budget, budget_s, work, args.out, args.threads)
            except RuntimeError as e:
                row = {"n_images": n, "budget": args.budget, "error": str(e)}
            rows.append(row)
            print(f"{n:,} images: " + ("failed: " + row["error"] if "error" in row else ", ".join(
                f"{s['stage']} {s['took_s']:.0f} s ({s['off_budget']:+.1%})" for s in row["stages"])), flush=True)
    (args.out / "results.md").write_text(markdown(rows, header))
    (args.out / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    print(f"table: {args.out / 'results.md'}")
    if record:
        from _results import append_result

        print(f"appended to {append_result('time_budget', {'header': header, 'rows': rows}, args=args, argv=argv)}")
    if any("error" in r for r in rows):
        return 1
    return 0 if all(s["within_tolerance"] for r in rows for s in r["stages"]) else 3


if __name__ == "__main__":
    sys.exit(main(record=True))
