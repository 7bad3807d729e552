"""`lordkit evaluate`: reconstruction, leakage against chance, transfer against ground truth, cycle
score against unrelated images, and collapse."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from lordkit.console import out_console
from lordkit.fsutil import data_dir, model_dir

from .common import get_base, handle_errors, say


def cv_method(n_folds: int, n_repeats: int, repeat_std: float | None) -> str:
    """'5-fold CV', or '5-fold CV x 5, partitions' std 1.4%' where the cross-validation was repeated."""
    repeated = f" x {n_repeats}, partitions' std {repeat_std:.1%}" if n_repeats > 1 else ""
    return f"{n_folds}-fold CV{repeated}"


def results_table(r: dict) -> Table:
    t = Table(title=f"evaluate {r['model']} on {r['data']} ({r['n_imgs']} images)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("reference", justify="right")
    rec = r["reconstruction"]
    t.add_row("reconstruction L1", f"{rec['l1']:.4f}", "")
    t.add_row("reconstruction PSNR", f"{rec['psnr']:.2f} dB", "")
    for key, label in (("class_from_content", "class from content codes"), ("content_from_class", "content from class codes")):
        if key in r["leakage"]:
            v = r["leakage"][key]
            spread = f" ± {v['accuracy_std']:.1%}" if "accuracy_std" in v else ""
            folds = (f" ({cv_method(v['n_folds'], v.get('n_repeats', 1), v.get('repeat_std'))})"
                     if "n_folds" in v else "")
            t.add_row(f"leakage: {label}{folds}", f"{v['accuracy']:.1%}{spread}", f"chance {v['chance']:.1%}")
    tr = r.get("transfer")
    if tr:
        t.add_row("transfer L1 to the true image", f"{tr['l1']:.4f}", f"copy baseline {tr['baseline_l1']:.4f}")
        t.add_row("transfer PSNR", f"{tr['psnr']:.2f} dB", f"copy baseline {tr['baseline_psnr']:.2f} dB")
        t.add_row("transfer L1 / baseline L1", f"{tr['l1_ratio_to_baseline']:.2f}", "lower is better")
    cy = r.get("cycle")
    if cy:
        for key in ("class", "content"):
            v = cy[key]
            t.add_row(f"cycle: {key} code distance", f"{v['distance']:.4f}",
                      f"unrelated images {v['baseline_distance']:.4f} ({v['ratio_to_baseline']:.2f}x)")
    cc = r.get("class_check")
    if cc:
        t.add_row("independent classifier on real images", f"{cc['real_accuracy']:.1%} ± {cc['real_accuracy_std']:.1%}",
                  f"{cv_method(cc['n_folds'], cc.get('n_repeats', 1), cc.get('real_repeat_std'))}; "
                  f"chance {cc['chance']:.1%}")
        t.add_row("transferred images seen in the target class", f"{cc['transferred_as_target_class']:.1%}",
                  f"in the content's class {cc['transferred_as_content_class']:.1%}")
        cs = cc["content_survival"]
        t.add_row("content features kept (within-class corr.)", f"{cs['mean_corr']:.2f}",
                  f"unrelated image of the class {cs['baseline_mean_corr']:.2f}")
    co = r.get("collapse")
    if co:
        state = "COLLAPSED" if co["collapsed"] else "no"
        t.add_row("output change with content / class", f"{co['content_ratio']:.3f} / {co['class_ratio']:.3f}",
                  f"collapse below {co['threshold']}: {state}")
        for stage, v in co.get("training", {}).items():
            ev = v.get("collapse")
            t.add_row(f"collapse during {stage} training",
                      f"epoch {ev['epoch']:.0f}" if ev else "none",
                      f"last ratios {v['content_ratio']:.3f} / {v['class_ratio']:.3f}")
    return t


@handle_errors
def evaluate(
    ctx: typer.Context,
    model_name: Annotated[str, typer.Option("--model-name", "-mn", help="Model with trained encoders.")],
    data_name: Annotated[str, typer.Option("--data-name", "-dn", help="Dataset to evaluate on (e.g. the test split).")],
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    max_imgs: Annotated[int, typer.Option("--max-imgs", help="Evaluate on at most this many images (random, seeded).")] = 5000,
    n_pairs: Annotated[int, typer.Option("--pairs", help="(content, class) pairs scored against ground truth.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image sample, the leakage split and the pairs.")] = 0,
    cv_repeats: Annotated[int, typer.Option("--cv-repeats", help="Leakage: repeat the 5-fold cross-validation over "
                                            "this many partitions and average.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Evaluate a model: reconstruction, leakage (vs chance), transfer (vs a copy baseline), cycle score (vs
    unrelated images), collapse, and a PNG grid."""
    from lordkit.data.store import Dataset
    from lordkit.evaluation import evaluate as run

    base = get_base(ctx)
    ds = Dataset(data_dir(base, data_name))
    r = run(model_dir(base, model_name), ds, data_name=data_name, device=device, max_imgs=max_imgs,
            n_pairs=n_pairs, seed=seed, cv_repeats=cv_repeats)
    if as_json:
        say(json.dumps(r, indent=2))
        return
    out_console.print(results_table(r))
    say(f"results: {r['json']}\ntransfer grid: {r['grid_png']}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
