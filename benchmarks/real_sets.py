"""Real labelled image sets that a package ships offline, trained through the command line as a user
would, at a given time budget: a table and a transfer grid per set and budget.

Sets (SETS): `digits`, scikit-learn's handwritten digits (1,797 images of 8x8 px, 10 classes,
sklearn.datasets.load_digits; needs `pip install scikit-learn`), written as a `folder` dataset of
class-named subfolders of PNGs, white ink on black.

For each set and each budget, in a fresh base dir:

    lordkit preprocess -di folder -dp <pngs> -dn <set> --img-size 32 --opt grey=1
    lordkit split-samples -idn <set> -trdn <set>-train -tsdn <set>-test -ts 0.2
    lordkit train -dn <set>-train -mn m --time-budget <70% of the budget (--stage1-share)>
    lordkit train-encoders -mn m --time-budget <what is left of the budget>
    lordkit evaluate -mn m -dn <set>-test --json

Each command runs in its own process (OMP_NUM_THREADS=--threads, 1 by default: one core); the preset
is the one `lordkit train` chooses (small, for a folder of fewer than 20,000 images). The row holds
the plan each stage fitted (epochs, steps), the minutes each stage took, and `evaluate`'s figures on
the held-out images: leakage (class from content codes, 5-fold cross-validated, with its spread,
against chance), the independent pixel classifier's accuracy on real held-out images and the share of
transferred images it calls the target class, the content-feature correlation between source and
result (next to an unrelated image of the class), and the cycle ratios. The evaluation grid is copied
to <out>/<set>-<budget>.png, the table written to <out>/results.md, and the run appended as one JSON
line to benchmarks/results/real_sets.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR elsewhere).

With --twin, each budgeted run is followed by its unbudgeted twin in another fresh base dir: the same
images, split, seeds and --set settings, `train --epochs E1` and `train-encoders --epochs E2` with E1
and E2 the whole epochs nearest to the steps each budgeted stage trained. The pair isolates what the
budget machinery (timing, fitted schedules, refits while training) does to quality at equal steps.

    python benchmarks/real_sets.py --out docs/real-sets --budgets 5m,15m,45m   # three budgets in turn
    python benchmarks/real_sets.py --out /tmp/rs --budgets 1m --limit 300     # smoke run: 300 images
    python benchmarks/real_sets.py --out /tmp/std1 --budgets 15m --set model.content_std=1 --tag std1
    python benchmarks/real_sets.py --out /tmp/twin --budgets 10m --twin      # budgeted, then unbudgeted
    python benchmarks/real_sets.py --out /tmp/bf --budgets 15m --cpu-bf16    # both stages under CPU bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

STAGE1_SHARE = 0.7  # of the budget, as `lordkit demo --time-budget`
TEST_SPLIT = 0.2
IMG_SIZE = 32


class SetUnavailable(RuntimeError):
    """A set whose package is not installed; one line."""


def write_digits(folder: Path, limit: int | None, seed: int) -> dict[str, Any]:
    """scikit-learn's digits as class-named folders of 8x8 PNGs (0..16 ink scaled to 0..255)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SetUnavailable("the digits set needs scikit-learn: pip install scikit-learn") from None
    import cv2

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    if limit:
        order = order[:limit]
    for i in order:
        sub = folder / str(int(d.target[i]))
        sub.mkdir(parents=True, exist_ok=True)
        img = np.clip(np.rint(d.images[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(sub / f"{i:04d}.png"), img)
    return {"source": "sklearn.datasets.load_digits", "n_images": int(len(order)), "n_classes": 10,
            "native_size": "8x8", "options": ["grey=1"]}


SETS: dict[str, Callable[[Path, int | None, int], dict[str, Any]]] = {"digits": write_digits}
SET_OPTS: dict[str, list[str]] = {"digits": ["--opt", "grey=1"]}


def parse_budget(text: str) -> float:
    from lordkit.training.budget import parse_duration

    return parse_duration(text, flag="--budgets")


def lordkit(base: Path, args: list[str], env: dict[str, str], log: Path) -> tuple[str, float]:
    """Run one lordkit command in base; its stdout, and its wall seconds. Raises with the log's tail."""
    t0 = time.monotonic()
    with open(log, "a") as err:
        err.write(f"$ lordkit {' '.join(args)}\n")
        err.flush()
        p = subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(base), *args], env=env,
                           stdout=subprocess.PIPE, stderr=err, text=True)
    took = time.monotonic() - t0
    if p.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"lordkit {args[0]} exited {p.returncode}: " + " | ".join(tail))
    return p.stdout, took


def run_one(name: str, budget: str, pngs: Path, work: Path, out: Path, threads: int,
            overrides: list[str] = (), tag: str = "", epochs: tuple[int, int] | None = None,
            stage1_share: float = STAGE1_SHARE, cpu_bf16: bool = False) -> dict[str, Any]:
    """One set at one budget, from preprocessing to evaluation; the row. With `epochs` (stage 1, stage 2)
    the stages train those epochs with no budget instead: the unbudgeted twin of a budgeted run."""
    budget_s = parse_budget(budget)
    label = f"{name}-{budget}{'-' + tag if tag else ''}{'-twin' if epochs else ''}"
    base = work / label
    base.mkdir(parents=True)
    log = out / f"{label}.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    lk = lambda *a: lordkit(base, list(a), env, log)  # noqa: E731
    lk("preprocess", "-di", "folder", "-dp", str(pngs), "-dn", name, "--img-size", str(IMG_SIZE), *SET_OPTS[name])
    lk("split-samples", "-idn", name, "-trdn", f"{name}-train", "-tsdn", f"{name}-test", "-ts", str(TEST_SPLIT))
    s1_budget = stage1_share * budget_s
    sets = [a for o in overrides for a in ("--set", o)]
    bf16 = ["--cpu-bf16"] if cpu_bf16 else []
    if epochs:
        said1, s1 = lk("train", "-dn", f"{name}-train", "-mn", "m", "--epochs", str(epochs[0]), *sets, *bf16)
        said2, s2 = lk("train-encoders", "-dn", f"{name}-train", "-mn", "m", "--epochs", str(epochs[1]), *bf16)
    else:
        said1, s1 = lk("train", "-dn", f"{name}-train", "-mn", "m", "--time-budget", f"{s1_budget:.0f}s", *sets,
                       *bf16)
        said2, s2 = lk("train-encoders", "-dn", f"{name}-train", "-mn", "m", "--time-budget",
                       f"{max(budget_s - s1, 1.0):.0f}s", *bf16)
    text, ev_s = lk("evaluate", "-mn", "m", "-dn", f"{name}-test", "--json")
    ev = json.loads(text)
    cfg = json.loads((base / "models" / "m" / "config.json").read_text())
    grid = out / f"{label}.png"
    shutil.copyfile(ev["grid_png"], grid)
    leak, check = ev["leakage"].get("class_from_content"), ev.get("class_check")
    return {
        "set": name, "budget": budget, "budget_s": budget_s, "overrides": list(overrides),
        "unbudgeted_twin": bool(epochs), "stage1_share": None if epochs else stage1_share, "cpu_bf16": cpu_bf16,
        "stage1": stage_row(cfg, "latent", s1, None if epochs else s1_budget, said1),
        "stage2": stage_row(cfg, "amortized", s2, None if epochs else budget_s - s1, said2),
        "minutes_both": (s1 + s2) / 60, "evaluate_minutes": ev_s / 60,
        "n_test_images": ev["n_imgs"],
        "leakage": pick(leak, ("accuracy", "accuracy_std", "repeat_std", "chance", "n_folds", "n_repeats",
                                     "n_codes")),
        "class_check": pick(check, ("real_accuracy", "real_repeat_std", "n_repeats", "transferred_as_target_class",
                                    "transferred_as_content_class", "chance")),
        "content_survival": pick((check or {}).get("content_survival"), ("mean_corr", "baseline_mean_corr")),
        "cycle": {k: v["ratio_to_baseline"] for k, v in (ev.get("cycle") or {}).items() if isinstance(v, dict)},
        "collapse": ev["collapse"],
        "reconstruction_psnr": ev["reconstruction"]["psnr"],
        "grid_png": grid.name,
    }


def pick(section: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """Those keys of an evaluation section; None where evaluate left the section out (too few images)."""
    return None if section is None else {k: section.get(k) for k in keys}


def stage_row(cfg: dict[str, Any], stage: str, took_s: float, budget_s: float | None, said: str) -> dict[str, Any]:
    """What a stage's plan fitted and what the stage took, against its budget (the steps trained as the
    command's `stage N done: S steps` line says them)."""
    plan = cfg[stage].get("plan") or {}
    done = re.search(r"stage \d done: (\d+) steps", said)
    return {"minutes": took_s / 60, "budget_minutes": budget_s / 60 if budget_s else None,
            "over_budget": took_s / budget_s - 1 if budget_s else None,
            "epochs": cfg[stage]["n_epochs"], "steps": int(done.group(1)) if done else plan.get("total_steps"),
            "planned_steps": plan.get("planned_steps", plan.get("total_steps")),
            "steps_per_epoch": plan.get("steps_per_epoch"), "refits": len(plan.get("refits") or [])}


CELLS = {"leakage": "{accuracy:.1%} ± {accuracy_std:.1%} ({chance:.1%})",
         "class_check": "{real_accuracy:.1%} / {transferred_as_target_class:.1%}",
         "content_survival": "{mean_corr:.2f} ({baseline_mean_corr:.2f})"}


def cell(row: dict[str, Any], section: str) -> str:
    """One table cell of a row's evaluation section; n/a where evaluate left it out."""
    return "n/a" if row[section] is None else CELLS[section].format(**row[section])


def budget_cell(row: dict[str, Any]) -> str:
    """The budget, its share for stage 1 where not the default, or what a twin trained instead."""
    if row.get("unbudgeted_twin"):
        return "no budget, its epochs"
    share = row.get("stage1_share", STAGE1_SHARE)
    return row["budget"] + ("" if share == STAGE1_SHARE else f" ({share:.0%} to stage 1)")


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [f"{header['cpu']}, {header['threads']} thread(s) per command, torch {header['torch']}, "
             f"commit {header['commit'][:10]}", "",
             "| set | budget | stage 1: epochs (steps), min | stage 2: epochs (steps), min | leakage (chance) "
             "| pixel classifier: real / transferred as target | content corr (unrelated) | cycle class / content |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['budget']} | {r['error']} | | | | | |")
            continue
        s1, s2, cy = r["stage1"], r["stage2"], r["cycle"]
        lines.append(
            f"| {r['set']}{' ' + ' '.join(r['overrides']) if r['overrides'] else ''}"
            f"{' --cpu-bf16' if r.get('cpu_bf16') else ''} "
            f"| {budget_cell(r)} "
            f"| {s1['epochs']} ({s1['steps']:,}), {s1['minutes']:.1f} | {s2['epochs']} ({s2['steps']:,}), {s2['minutes']:.1f} "
            f"| {cell(r, 'leakage')} | {cell(r, 'class_check')} | {cell(r, 'content_survival')} "
            f"| {cy.get('class', float('nan')):.2f} / {cy.get('content', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def twin_epochs(stage: dict[str, Any]) -> int:
    """The whole epochs nearest to the steps a budgeted stage trained (its last epoch may be partial)."""
    return max(1, round(stage["steps"] / stage["steps_per_epoch"]))


def report(row: dict[str, Any], took_s: float) -> None:
    """One console line per run."""
    what = f"{row['set']} {row['budget']}{' twin (no budget)' if row.get('unbudgeted_twin') else ''}"
    print(f"{what}: {took_s:.0f} s " + ("failed: " + row["error"] if "error" in row else
                                         f"leakage {cell(row, 'leakage')}, real / transferred as target "
                                         f"{cell(row, 'class_check')}"), flush=True)


def main(argv: list[str] | None = None, *, record: bool = False) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Folder for results.md, the grids and the logs.")
    ap.add_argument("--sets", default="digits", help=f"Comma-separated, of: {', '.join(SETS)}.")
    ap.add_argument("--budgets", default="15m", help="Comma-separated time budgets for both stages (5m,15m,45m).")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every command (1: one core).")
    ap.add_argument("--limit", type=int, default=None, help="At most this many images per set (smoke runs).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of --limit's sample.")
    ap.add_argument("--work-dir", type=Path, default=None, help="Keep the base dirs here (default: a temp dir).")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="Config override for `lordkit train` (repeatable), e.g. --set model.content_std=1.")
    ap.add_argument("--stage1-share", type=float, default=STAGE1_SHARE,
                    help=f"Share of each budget given to stage 1 (default {STAGE1_SHARE}, as `lordkit demo`); "
                         "stage 2 gets what is left when stage 1 ends.")
    ap.add_argument("--twin", action="store_true",
                    help="After each budgeted run, train its unbudgeted twin: the same set, split and settings "
                         "with --epochs set to the steps the budgeted stages trained (to the nearest epoch).")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="Train both stages with `--cpu-bf16` (bf16 autocast; CPUs with AVX-512 BF16 or AMX).")
    ap.add_argument("--tag", default="", help="Suffix of this run's file names (runs with --set).")
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    budgets = [b for b in args.budgets.split(",") if b]
    for s in sets:
        if s not in SETS:
            ap.error(f"unknown set {s!r}; choose from {', '.join(SETS)}")
    if not 0 < args.stage1_share < 1:
        ap.error(f"--stage1-share must be between 0 and 1, got {args.stage1_share}")
    for b in budgets:
        try:
            parse_budget(b)
        except ValueError as e:
            ap.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    header = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
              "commit": "unknown"}
    if record:
        from _results import _commit, machine  # benchmarks/_results.py, found beside this script when it runs as one

        header.update(cpu=machine()["cpu"], commit=_commit() or "unknown")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lordkit-real-sets-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in sets:
            pngs = work / f"{name}-png"
            shutil.rmtree(pngs, ignore_errors=True)
            try:
                about = SETS[name](pngs, args.limit, args.seed)
            except SetUnavailable as e:
                print(f"{name}: {e}", file=sys.stderr)
                return 2
            for budget in budgets:
                label = f"{name}-{budget}{'-' + args.tag if args.tag else ''}"
                for left in (label, f"{label}-twin"):  # base dirs an earlier run left in --work-dir
                    shutil.rmtree(work / left, ignore_errors=True)
                t0 = time.monotonic()
                try:
                    row = run_one(name, budget, pngs, work, args.out, args.threads, args.overrides, args.tag,
                                  stage1_share=args.stage1_share, cpu_bf16=args.cpu_bf16)
                except RuntimeError as e:
                    row = {"set": name, "budget": budget, "error": str(e)}
                row["set_info"] = about
                rows.append(row)
                report(row, time.monotonic() - t0)
                if args.twin and "error" not in row:
                    t0 = time.monotonic()
                    epochs = (twin_epochs(row["stage1"]), twin_epochs(row["stage2"]))
                    try:
                        twin = run_one(name, budget, pngs, work, args.out, args.threads, args.overrides, args.tag,
                                       epochs=epochs, cpu_bf16=args.cpu_bf16)
                    except RuntimeError as e:
                        twin = {"set": name, "budget": budget, "unbudgeted_twin": True, "error": str(e)}
                    twin["set_info"] = about
                    rows.append(twin)
                    report(twin, time.monotonic() - t0)
    (args.out / "results.md").write_text(markdown(rows, header))
    (args.out / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    print(f"table: {args.out / 'results.md'}")
    if record:
        from _results import append_result

        print(f"appended to {append_result('real_sets', {'header': header, 'rows': rows}, args=args, argv=argv)}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(record=True))
