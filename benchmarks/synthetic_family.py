"""One training recipe across the family of synthetic sets (lordkit.data.datasets.synthetic.FAMILY).

For each variant: generate it, hold out 20% of the (shape, content) pairs, train both stages of a
preset within a time budget, evaluate on the held-out pairs, and write a row: held-out transfer error
over the copy baseline (the recipe's target: <= 0.5), class-from-content leakage against chance
(target: <= chance + 5 points), whether the run collapsed, and the minutes it took. A transfer grid
PNG per variant goes beside the table.

The budget is kept as `lordkit train --time-budget` keeps it (lordkit.training.budget): what is left
of the variant's minutes after generating it, less a reserve for the evaluation, is the training
budget; stage 1 fits its steps to 70% of it (as `lordkit demo --time-budget`; --stage1-share sets
another share), stage 2 to what is left when stage 1 ends. The preset's length is where the plan's
schedule is scaled from (the `small` preset counted in images seen, as `lordkit train` applies it).

    python benchmarks/synthetic_family.py --out family-results                   # 15 min per variant
    python benchmarks/synthetic_family.py --out r --preset small --minutes 5 --variants hue-content-small,colour-class
    python benchmarks/synthetic_family.py --out r --quick                          # plumbing check: seconds

Run as a script, it also appends the run's header and rows as one line to
benchmarks/results/synthetic_family.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR appends to
DIR/synthetic_family.jsonl instead: use it for --quick runs).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lordkit.config import LordConfig, fit_to_images, fit_to_length, preset, tiny_model
from lordkit.data.datasets.synthetic import FAMILY
from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options, dataset_ids
from lordkit.data.splits import split_samples
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError
from lordkit.evaluation import evaluate
from lordkit.fsutil import atomic_write_json, atomic_write_text
from lordkit.modeldir import load_config
from lordkit.training import train_amortized, train_latent

TRANSFER_TARGET = 0.5  # held-out transfer L1 over the copy baseline's
LEAKAGE_MARGIN = 0.05  # class-from-content accuracy over chance
TEST_SPLIT = 0.2
STAGE1_SHARE = 0.7  # of the training budget, as `lordkit demo --time-budget`
EVAL_RESERVE = 0.08  # of what is left of a variant's minutes after generating it, kept for the evaluation
# --quick: a tiny grid of every variant, and a tiny model trained one epoch per stage.
QUICK_GRID = {"n_x": "2", "n_y": "2", "n_scale": "1", "n_rotation": "1", "n_shapes": "3"}


def quick_opts(opts: dict[str, str]) -> dict[str, str]:
    """A variant's options on a tiny grid (hue kept a content factor with 2 levels where it is one)."""
    small = {**opts, **QUICK_GRID}
    if opts.get("colour", "content") != "class":
        small["n_hue"] = "2"
    return small


def start_config(name: str, img_size: int, channels: int, quick: bool, overrides: list[str] = (),
                 n_imgs: int = 0) -> LordConfig:
    """The preset as `lordkit train` starts it on n_imgs images (its length counted in images seen where
    it is), with the overrides on top."""
    cfg = fit_to_length(preset(name, known=dataset_ids()), name, n_imgs)[0].apply_overrides(overrides)
    if quick:
        tiny = {"batch_size": 8, "n_epochs": 1, "log_every": 1}
        return cfg.replace(model=vars(tiny_model(img_size, channels)), latent={**tiny, "sample_every_epochs": 1},
                           amortized=tiny)
    return fit_to_images(cfg, img_size, channels)


def run_variant(name: str, work: Path, out: Path, preset_name: str, minutes: float, quick: bool,
                show_progress: bool, overrides: list[str] = (), stage1_share: float = STAGE1_SHARE) -> dict[str, Any]:
    opts, img_size = FAMILY[name]
    opts = quick_opts(opts) if quick else dict(opts)
    full, train, test = (work / "data" / f"{name}-{part}" for part in ("full", "train", "test"))
    mdir = work / "models" / name
    quiet = dict(show_progress=show_progress, tensorboard=False, device="cpu")
    t_start = time.perf_counter()

    # Generate the variant and hold out a fifth of its (shape, content) pairs.
    preprocess("synthetic", None, full, img_size=img_size, opts=Options(opts), force=True, show_progress=False)
    split_samples(Dataset(full), train, test, TEST_SPLIT, force=True)
    train_ds, test_ds = Dataset(train), Dataset(test)

    # Train both stages within what is left of the budget (--quick: one epoch each, no budget).
    cfg = start_config(preset_name, img_size, train_ds.meta.channels, quick, overrides, len(train_ds))
    budget_s = None if quick else (1.0 - EVAL_RESERVE) * (minutes * 60.0 - (time.perf_counter() - t_start))
    t_train = time.monotonic()
    announce = dict(announce=lambda plan: None) if not show_progress else {}
    train_latent(train_ds, mdir, cfg, data_name=train.name, force=True, budget_start=t_train,
                 time_budget_s=stage1_share * budget_s if budget_s else None, **announce, **quiet)
    train_amortized(train_ds, mdir, force=True, budget_start=time.monotonic(),
                    time_budget_s=max(budget_s - (time.monotonic() - t_train), 1.0) if budget_s else None,
                    **announce, **quiet)
    train_s = time.monotonic() - t_train
    cfg = load_config(mdir)

    # Evaluate on the held-out pairs.
    ev = evaluate(mdir, test_ds, data_name=test.name, device="cpu", n_pairs=64 if quick else 512)
    grid = shutil.copyfile(ev["grid_png"], out / f"{name}-transfer.png")
    tr, leak, co = ev.get("transfer") or {}, ev["leakage"]["class_from_content"], ev["collapse"]
    training_events = {stage: v["collapse"] for stage, v in co["training"].items() if v.get("collapse")}
    ratio = tr.get("l1_ratio_to_baseline", float("nan"))
    row = {
        "variant": name, "opts": opts, "img_size": img_size, "n_train": len(train_ds), "n_test": len(test_ds),
        "epochs": [cfg.latent.n_epochs, cfg.amortized.n_epochs],
        "steps": [(cfg.latent.plan or {}).get("total_steps"), (cfg.amortized.plan or {}).get("total_steps")],
        "transfer_over_copy": ratio, "leakage": leak["accuracy"], "leakage_std": leak.get("accuracy_std"),
        "leakage_repeat_std": leak.get("repeat_std"), "leakage_repeats": leak.get("n_repeats"),
        "chance": leak["chance"],
        "cycle_class_ratio": ev["cycle"]["class"]["ratio_to_baseline"] if ev.get("cycle") else None,
        "cycle_content_ratio": ev["cycle"]["content"]["ratio_to_baseline"] if ev.get("cycle") else None,
        "content_ratio": co["content_ratio"], "class_ratio": co["class_ratio"],
        "collapsed": bool(co["collapsed"] or training_events), "collapse_during_training": training_events,
        "train_minutes": train_s / 60.0, "minutes": (time.perf_counter() - t_start) / 60.0,
        "grid_png": str(grid),
    }
    row["passes"] = bool(ratio <= TRANSFER_TARGET and leak["accuracy"] <= leak["chance"] + LEAKAGE_MARGIN
                         and not row["collapsed"])
    return row


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    sets = "".join(f" --set {o}" for o in header.get("overrides", []))
    share = header.get("stage1_share", STAGE1_SHARE)
    share = "" if share == STAGE1_SHARE else f", {share:.0%} of training to stage 1"
    lines = [f"# {header['preset']}{sets} on the synthetic family ({header['minutes']} min per variant{share}"
             f"{', quick' if header['quick'] else ''})", "",
             f"{header['cpu']}, {header['threads']} torch threads, torch {header['torch']}.", "",
             "| variant | transfer / copy (held out) | class from content, 5-fold CV ± std (chance) | cycle class / content | "
             "collapse | epochs | minutes | passes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cyc = (f"{r['cycle_class_ratio']:.2f} / {r['cycle_content_ratio']:.2f}"
               if r["cycle_class_ratio"] is not None else "-")
        std = f" ± {r['leakage_std']:.1%}" if r.get("leakage_std") is not None else ""
        lines.append(f"| {r['variant']} | {r['transfer_over_copy']:.2f} | {r['leakage']:.1%}{std} ({r['chance']:.1%}) | "
                     f"{cyc} | {'yes' if r['collapsed'] else 'no'} | {r['epochs'][0]} + {r['epochs'][1]} | "
                     f"{r['minutes']:.1f} | {'yes' if r['passes'] else 'no'} |")
    lines += ["", f"Targets: transfer <= {TRANSFER_TARGET}x the copy, leakage <= chance + "
              f"{LEAKAGE_MARGIN:.0%}, no collapse. {sum(r['passes'] for r in rows)}/{len(rows)} pass."]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    """The CPU's model name where the OS tells it (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None, *, record: bool = False) -> int:
    """Run the family; `record`: also append the rows to the result file (what the script does)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True,
                    help="Output dir: results.md, results.json, <variant>-transfer.png.")
    ap.add_argument("--preset", default="small", help="Training preset (lordkit.config.PRESETS).")
    ap.add_argument("--minutes", type=float, default=15.0, help="Budget per variant, generation to evaluation.")
    ap.add_argument("--variants", default=",".join(FAMILY), help="Comma-separated names from FAMILY.")
    ap.add_argument("--work", type=Path, default=None, help="Where data and models go (default: a temporary dir).")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="Config override on top of the preset (repeatable), as `lordkit train --set`.")
    ap.add_argument("--stage1-share", type=float, default=STAGE1_SHARE,
                    help=f"Share of the training budget given to stage 1 (default {STAGE1_SHARE}, as `lordkit demo`); "
                         "stage 2 gets what is left when stage 1 ends.")
    ap.add_argument("--quick", action="store_true", help="Tiny grids, tiny model, one epoch: checks the plumbing.")
    ap.add_argument("--progress", action="store_true", help="Show training progress bars.")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in FAMILY]
    try:
        if unknown:
            raise LordkitError(f"unknown variant {unknown[0]!r}; choose from {', '.join(FAMILY)}")
        if args.minutes <= 0:
            raise LordkitError(f"--minutes must be > 0, got {args.minutes}")
        if not 0 < args.stage1_share < 1:
            raise LordkitError(f"--stage1-share must be between 0 and 1, got {args.stage1_share}")
        preset(args.preset, known=dataset_ids()).apply_overrides(args.overrides)  # a typo fails before any work
        args.out.mkdir(parents=True, exist_ok=True)
        header = {"preset": args.preset, "overrides": args.overrides, "minutes": args.minutes, "quick": args.quick,
                  "stage1_share": args.stage1_share, "cpu": cpu_name(),
                  "threads": torch.get_num_threads(), "torch": torch.__version__}
        with tempfile.TemporaryDirectory(prefix="lordkit-family-") as tmp:
            work = args.work or Path(tmp)
            rows = []
            for name in names:
                rows.append(run_variant(name, work, args.out, args.preset, args.minutes, args.quick, args.progress,
                                        args.overrides, args.stage1_share))
                print(f"{name}: transfer/copy {rows[-1]['transfer_over_copy']:.2f}, leakage {rows[-1]['leakage']:.1%} "
                      f"(chance {rows[-1]['chance']:.1%}), collapsed {rows[-1]['collapsed']}, "
                      f"{rows[-1]['minutes']:.1f} min", flush=True)
                atomic_write_json(args.out / "results.json", {**header, "rows": rows})
                atomic_write_text(args.out / "results.md", markdown(rows, header))
    except LordkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"table: {args.out / 'results.md'}")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        figures = {**header, "rows": rows, "passes": sum(r["passes"] for r in rows),
                   "json": str(args.out / "results.json")}
        print(f"appended to {append_result('synthetic_family', figures, args=args, argv=argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(record=True))
