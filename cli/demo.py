"""`lordkit demo`: the whole flow on the embedded synthetic dataset, offline, on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lordkit.console import console
from lordkit.fsutil import data_dir

from .common import get_base, handle_errors, say


@handle_errors
def demo(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Prefix of every dataset, model and export the demo writes.")] = "demo",
    img_size: Annotated[int, typer.Option("--img-size", help="Image size of the synthetic set.")] = 32,
    force: Annotated[bool, typer.Option("--force", help="Replace the results of an earlier demo run.")] = False,
) -> None:
    """Generate the synthetic shapes set, split it, and show what is in it (no downloads, no GPU)."""
    from lordkit.data.info import contact_sheet
    from lordkit.data.preprocess import preprocess
    from lordkit.data.splits import split_samples
    from lordkit.data.store import Dataset

    base = get_base(ctx)
    full, train, test = (data_dir(base, f"{name}-{part}") for part in ("full", "train", "test"))
    console.rule("[bold]1. generate the synthetic dataset")
    preprocess("synthetic", None, full, img_size=img_size, force=force)
    ds = Dataset(full)
    console.rule("[bold]2. hold out 20% of the (shape, content) pairs")
    split_samples(ds, train, test, 0.2, force=force)
    sheet = contact_sheet(ds, full / "contact_sheet.png")
    summary = {
        "dataset": f"{full} ({len(ds)} images, {ds.n_classes} classes, {img_size}x{img_size})",
        "train / test": f"{train}, {test}",
        "contact sheet": str(sheet),
    }
    console.rule("[bold]summary")
    for key, value in summary.items():
        say(f"{key:>14}: {value}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
