"""`lordkit demo`: the whole flow on the embedded synthetic dataset, offline, on CPU.

generate -> split -> train (stage 1) -> train-encoders (stage 2) -> export (ONNX + TorchScript,
verified) -> transfer grid and video (torch-free runtime) -> bench -> evaluate -> summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lordkit.config import TINY_MODEL, LordConfig, fit_to_length, preset
from lordkit.console import console, out_console
from lordkit.fsutil import atomic_write_json, data_dir, export_dir, model_dir

from .common import get_base, handle_errors, say

# The demo's data: 5 shapes, each in its own colour (class), x 96 contents (4 x, 4 y, 3 scales,
# 2 rotations) at 32 px: 480 images. README ("The demo") has its figures.
DEMO_GRID = {"n_x": "4", "n_y": "4", "n_scale": "3", "n_rotation": "2", "colour": "class"}
QUICK_GRID = {"n_x": "2", "n_y": "2", "n_scale": "1", "n_rotation": "1", "n_shapes": "3", "colour": "class"}
# --quick: the tiny networks of lordkit.config.TINY_MODEL (the preset's code sizes and depth stay), 2 epochs a stage.
QUICK_CHANGES: dict[str, dict[str, Any]] = {
    "model": {k: TINY_MODEL[k] for k in ("adain_dim", "gen_last_dim", "enc_conv_dims", "enc_fc_dim")},
    "latent": {"n_epochs": 2, "batch_size": 8},
    "amortized": {"n_epochs": 2, "batch_size": 8},
}
# Pass marks from the demo's purpose: transfer error at most half the copy baseline's, leakage near chance.
MAX_TRANSFER_RATIO = 0.5
MAX_LEAK_ABOVE_CHANCE = 0.05
# --time-budget covers both training stages: stage 1 gets this share, stage 2 whatever is left of the
# budget when stage 1 ends (stage 1's plan ends it early rather than late, so stage 2 gets at least the rest).
STAGE1_SHARE = 0.7


class _Steps:
    """Numbered step headers and their durations."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.n = 0

    def run(self, title: str, fn):
        self.n += 1
        console.rule(f"[bold]{self.n}. {title}")
        t = time.perf_counter()
        result = fn()
        self.times[title] = round(time.perf_counter() - t, 1)
        return result


def _transfer_grid(export: Path, test, out: Path, n_contents: int = 6) -> Path:
    """Contents from the held-out split (columns) in every class (rows, one reference image each),
    through the torch-free runtime."""
    import numpy as np

    from lordkit.runtime import Transfer
    from lordkit.viz import save_png, transfer_grid

    rng = np.random.default_rng(0)
    picks = np.sort(rng.choice(len(test), min(n_contents, len(test)), replace=False))
    contents = [np.asarray(test.images[i]) for i in picks]
    refs = []
    for c in range(test.n_classes):
        idx = np.flatnonzero(test.class_ids == c)
        if len(idx):
            refs.append(np.asarray(test.images[int(rng.choice(idx))]))
    t = Transfer(export, provider="cpu", align=False, warn=lambda message: None)
    out_imgs = t.transfer(contents, refs)  # (N, M, H, W, C) in [0, 1]
    return save_png(out, transfer_grid(contents, refs, np.swapaxes(out_imgs, 0, 1), cell=64))


def _transfer_video(export: Path, out: Path, n_frames: int = 48, fps: int = 24) -> Path | None:
    """A short video: one shape moving across the picture (its x content factor swept over time),
    drawn in every class side by side by the torch-free runtime and encoded with its video writer.
    None (and one line saying how to get it) without the `video` extra."""
    import numpy as np

    from lordkit.data.datasets.synthetic import render
    from lordkit.runtime import Transfer
    from lordkit.runtime.video import have_pyav
    from lordkit.runtime.video.writers import open_writer

    if not have_pyav():
        say(f"{'video':>15}: skipped; pip install 'lordkit[video]' (PyAV) to get the demo's transfer video")
        return None
    from fractions import Fraction

    from lordkit.imaging import square_resize

    t = Transfer(export, provider="cpu", align=False, warn=lambda message: None)
    s = t.img_size
    # Content: the first shape moving left to right and back, rendered at a fine x grid (y, scale fixed).
    grid = {"x": n_frames // 2, "y": 1, "scale": 1, "rotation": 1, "hue": 1}
    path = list(range(n_frames // 2)) + list(range(n_frames // 2 - 1, -1, -1))
    contents = [square_resize(render(0, x, grid, colour="class"), s, t.channels) for x in path]
    codes = t.class_codes(list(range(len(t.class_names))))
    cc = t.content_codes(contents)
    frames = np.empty((n_frames, len(codes), s, s, t.channels), np.float32)
    for a, b, imgs in t.generate_iter(cc, codes):
        frames.reshape(-1, s, s, t.channels)[a:b] = imgs
    scale = max(1, 128 // s)
    writer = open_writer("pyav", out, (len(codes) + 1) * s * scale, s * scale, Fraction(fps), Fraction(1, fps))
    try:
        for k in range(n_frames):
            row = np.concatenate([contents[k]] + [(np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8) for f in frames[k]], 1)
            row = np.repeat(np.repeat(row, scale, 0), scale, 1)  # nearest-neighbour enlargement
            writer.write(np.ascontiguousarray(np.broadcast_to(row, row.shape[:2] + (3,))), k)  # grey -> RGB
    finally:
        writer.close()
    return writer.staged.commit()


@handle_errors
def demo(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Prefix of every dataset, model and export the demo writes.")] = "demo",
    quick: Annotated[bool, typer.Option("--quick", help="A tiny version of the same flow (seconds; numbers meaningless).")] = False,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Include the latency benchmark step.")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a training setting, e.g. --set latent.n_epochs=10.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the results of an earlier demo run.")] = False,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help=f"Fit both training stages together to this much time (90s, 15m, 2h): stage 1 gets {STAGE1_SHARE:.0%}, stage 2 what is left when stage 1 ends. Generation, export, benchmark and evaluation come on top.")] = None,
) -> None:
    """Run the whole flow on the generated shapes set, offline on the CPU, and summarise it."""
    from lordkit.training.budget import parse_duration

    budget_s = parse_duration(time_budget) if time_budget is not None else None
    from lordkit.data.info import contact_sheet
    from lordkit.data.preprocess import preprocess
    from lordkit.data.sources import Options
    from lordkit.data.splits import split_samples
    from lordkit.data.store import Dataset
    from lordkit.errors import LordkitError
    from lordkit.evaluation import evaluate
    from lordkit.export.exporter import export_model
    from lordkit.modeldir import demo_path, samples_dir
    from lordkit.training import train_amortized, train_latent

    base = get_base(ctx)
    full, train, test = (data_dir(base, f"{name}-{part}") for part in ("full", "train", "test"))
    mdir, edir = model_dir(base, name), export_dir(base, name)
    outputs = [full, train, test, mdir, edir]
    if not force and any(p.exists() for p in outputs):
        existing = next(p for p in outputs if p.exists())
        raise LordkitError(f"{existing} exists from an earlier demo; pass --force to run it again")
    grid = QUICK_GRID if quick else DEMO_GRID

    def config(n_train: int | None = None) -> LordConfig:
        """The small preset (at the training split's length once it is known), --quick's changes, and
        the user's --set strings last, which win."""
        c = preset("small") if n_train is None else fit_to_length(preset("small"), "small", n_train)[0]
        c = c.replace(**QUICK_CHANGES) if quick else c
        return c.apply_overrides(list(set_ or []))

    cfg = config()
    steps = _Steps()
    quiet = dict(show_progress=True, tensorboard=False, device="cpu")

    steps.run("generate the synthetic shapes set",
              lambda: preprocess("synthetic", None, full, img_size=cfg.model.img_size, opts=Options(dict(grid)), force=force))
    ds = Dataset(full)
    sheet = contact_sheet(ds, full / "contact_sheet.png")
    steps.run("hold out 20% of the (shape, content) pairs", lambda: split_samples(ds, train, test, 0.2, force=force))
    train_ds, test_ds = Dataset(train), Dataset(test)
    cfg = config(len(train_ds))  # the demo's split of 384 images: the preset's own epochs
    stages_start = time.monotonic()
    s1 = steps.run("stage 1: latent optimization", lambda: train_latent(
        train_ds, mdir, cfg, data_name=train.name, force=force, budget_start=stages_start,
        time_budget_s=budget_s * STAGE1_SHARE if budget_s else None, **quiet))
    s2 = steps.run("stage 2: encoders", lambda: train_amortized(
        train_ds, mdir, time_budget_s=budget_s - (time.monotonic() - stages_start) if budget_s else None, **quiet))
    stages_s = time.monotonic() - stages_start
    manifest = steps.run("export ONNX + TorchScript, verified", lambda: export_model(
        mdir, edir, onnx=True, torchscript=True, force=force, show=True))
    grid_png = steps.run("transfer held-out contents into every class (torch-free runtime)",
                         lambda: _transfer_grid(edir, test_ds, demo_path(mdir, "transfer.png")))
    video = steps.run("transfer video: a moving shape drawn in every class",
                      lambda: _transfer_video(edir, demo_path(mdir, "transfer.mp4")))
    bench_result: dict[str, Any] | None = None
    if bench:
        from lordkit.bench import results_table, run_benchmark

        bench_result = steps.run("benchmark", lambda: run_benchmark(
            edir, mdir, batch_sizes=[1, 8, 32], backends=["eager", "torchscript", "ort-cpu", "ort-cpu-opt"],
            networks=["transfer"], warmup=2, iters=10 if not quick else 2, max_time_s=5.0 if not quick else 1.0,
            device="cpu", align=False))
        out_console.print(results_table(bench_result))
    ev = steps.run("evaluate on the held-out split", lambda: evaluate(mdir, test_ds, data_name=test.name, device="cpu"))

    from .evaluate import results_table as eval_table

    out_console.print(eval_table(ev))
    tr = ev.get("transfer") or {}
    leak = ev["leakage"]["class_from_content"]
    transfer_ok = bool(tr) and tr["l1_ratio_to_baseline"] <= MAX_TRANSFER_RATIO
    leak_ok = leak["accuracy"] <= leak["chance"] + MAX_LEAK_ABOVE_CHANCE
    summary = {
        "dataset": str(full), "train": str(train), "test": str(test), "contact_sheet": str(sheet),
        "model": str(mdir), "samples": str(samples_dir(mdir)), "export": str(edir), "transfer_grid": str(grid_png),
        "transfer_video": str(video) if video else None,
        "evaluation": ev["json"],
        "transfer_l1": tr.get("l1"), "baseline_l1": tr.get("baseline_l1"),
        "transfer_ratio_to_baseline": tr.get("l1_ratio_to_baseline"), "transfer_ok": transfer_ok,
        "leakage_accuracy": leak["accuracy"], "leakage_accuracy_std": leak.get("accuracy_std"),
        "leakage_chance": leak["chance"], "leakage_ok": leak_ok,
        "stage1_loss": s1.get("rec", s1.get("loss")), "stage2_loss": s2.get("loss"),
        "parity_max_abs_err": max((r["max_abs_err"] for r in manifest.get("parity", [])), default=None),
        "seconds": steps.times, "quick": quick,
        "time_budget_s": budget_s, "training_s": round(stages_s, 1),
        "plans": {"latent": s1.get("plan"), "amortized": s2.get("plan")} if budget_s else None,
    }
    if bench_result is not None:
        summary["bench"] = [{"network": r["network"], "backend": r["backend"], "batch": r["batch"],
                             "p50_ms": r["latency_ms"]["p50"], "img_per_sec": r["img_per_sec"]}
                            for r in bench_result.get("rows", []) if r.get("status") == "ok"]
    atomic_write_json(demo_path(mdir, "summary.json"), summary)

    console.rule("[bold]summary")
    lines = [
        ("dataset", f"{full} ({len(ds)} images, contact sheet {sheet.name})"),
        ("model", f"{mdir} (samples/ has a grid per epoch)"),
        ("export", f"{edir} (max parity error {summary['parity_max_abs_err']:.2e})"),
        ("transfer grid", str(grid_png)),
        ("evaluation", ev["json"]),
    ]
    if video:
        lines.insert(4, ("transfer video", f"{video} (the moving shape on the left, each class beside it)"))
    if tr:
        mark = "ok" if transfer_ok else f"above the demo's {MAX_TRANSFER_RATIO:.0%} pass mark"
        lines.append(("transfer error", f"L1 {tr['l1']:.4f} vs copy baseline {tr['baseline_l1']:.4f} "
                                         f"= {tr['l1_ratio_to_baseline']:.2f}x ({mark})"))
    mark = "ok" if leak_ok else f"more than {MAX_LEAK_ABOVE_CHANCE:.0%} above chance"
    lines.append(("leakage", f"class from content codes {leak['accuracy']:.1%} ± {leak.get('accuracy_std', 0):.1%} "
                             f"(5-fold CV) vs chance {leak['chance']:.1%} ({mark})"))
    lines.append(("time", ", ".join(f"{k.split(':')[0]} {v:.0f}s" for k, v in steps.times.items())))
    if budget_s:
        lines.append(("time budget", f"both stages {stages_s:.0f}s of a {budget_s:.0f}s budget "
                                     f"({s1['epochs']} + {s2['epochs']} epochs)"))
    for key, value in lines:
        say(f"{key:>15}: {value}")
    say(f"{'summary':>15}: {demo_path(mdir, 'summary.json')}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
