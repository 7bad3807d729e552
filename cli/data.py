"""Dataset commands: preprocess, split-classes, split-samples, and `data info` / `data list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.table import Table

from lordkit.console import out_console
from lordkit.fsutil import data_dir

from .common import get_base, handle_errors, say

data_app = typer.Typer(help="Inspect preprocessed datasets.", no_args_is_help=True)


def _supported() -> str:
    from lordkit.data.sources import READERS, get_reader

    get_reader("folder")  # registers all readers
    return ", ".join(sorted(READERS))


@handle_errors
def preprocess(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Option("--dataset-id", "-di", help="Which dataset reader: mnist, smallnorb, cars3d, shapes3d, celeba, kth, rafd, folder, synthetic.")],
    data_name: Annotated[str, typer.Option("--data-name", "-dn", help="Name of the new dataset under <base-dir>/data/.")],
    dataset_path: Annotated[Optional[Path], typer.Option("--dataset-path", "-dp", help="Folder (or file) with the dataset's official files; not needed for synthetic.")] = None,
    img_size: Annotated[int, typer.Option("--img-size", help="Square image size in pixels (the paper uses 64).")] = 64,
    opt: Annotated[Optional[list[str]], typer.Option("--opt", help="Dataset-specific KEY=VALUE setting, repeatable (docs/datasets.md lists them).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Parallel decoding threads (default: CPU count, at most 8).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dataset of that name.")] = False,
) -> None:
    """Read a dataset from its official files into a lordkit dataset store."""
    from lordkit.data.preprocess import preprocess as run
    from lordkit.data.sources import Options

    out = data_dir(get_base(ctx), data_name)
    summary = run(dataset_id, dataset_path, out, img_size=img_size, opts=Options.parse(opt or []),
                  force=force, workers=workers)
    say(f"wrote {summary.n_imgs} images of {summary.n_classes} classes to {summary.path}")
    if summary.n_failed:
        say(f"skipped {summary.n_failed} image(s) that did not decode, e.g. {summary.failed_names[0]}")


def _open(ctx: typer.Context, name: str):
    from lordkit.data.store import Dataset

    return Dataset(data_dir(get_base(ctx), name))


# Options both split commands take.
InputName = Annotated[str, typer.Option("--input-data-name", "-idn", help="Dataset to split.")]
TrainName = Annotated[str, typer.Option("--train-data-name", "-trdn", help="Name of the train part.")]
TestName = Annotated[str, typer.Option("--test-data-name", "-tsdn", help="Name of the test part.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed of the split (same seed, same split).")]
Force = Annotated[bool, typer.Option("--force", help="Replace existing outputs.")]


def _split(ctx: typer.Context, split: Callable, input_data_name: str, train_data_name: str, test_data_name: str,
           **how: Any) -> tuple[int, int]:
    """Run a lordkit.data.splits function from the input dataset into the two named parts: (n_train, n_test)."""
    base = get_base(ctx)
    train_idx, test_idx = split(_open(ctx, input_data_name), data_dir(base, train_data_name),
                                data_dir(base, test_data_name), **how)
    return len(train_idx), len(test_idx)


@handle_errors
def split_classes(
    ctx: typer.Context,
    input_data_name: InputName,
    train_data_name: TrainName,
    test_data_name: TestName,
    num_test_classes: Annotated[int, typer.Option("--num-test-classes", "-ntsi", help="How many whole classes to hold out.")],
    seed: Seed = 1234,
    force: Force = False,
) -> None:
    """Hold out whole classes: the test set has classes the model never saw."""
    from lordkit.data.splits import split_classes as run

    n_train, n_test = _split(ctx, run, input_data_name, train_data_name, test_data_name,
                             n_test_classes=num_test_classes, seed=seed, force=force)
    say(f"{train_data_name}: {n_train} images; {test_data_name}: {n_test} images "
        f"of {num_test_classes} held-out classes (seed {seed})")


@handle_errors
def split_samples(
    ctx: typer.Context,
    input_data_name: InputName,
    train_data_name: TrainName,
    test_data_name: TestName,
    test_split: Annotated[float, typer.Option("--test-split", "-ts", help="Fraction of images held out, e.g. 0.2.")],
    seed: Seed = 1234,
    force: Force = False,
) -> None:
    """Hold out a random fraction of the images; both parts keep every class."""
    from lordkit.data.splits import split_samples as run

    n_train, n_test = _split(ctx, run, input_data_name, train_data_name, test_data_name,
                             test_split=test_split, seed=seed, force=force)
    say(f"{train_data_name}: {n_train} images; {test_data_name}: {n_test} images (seed {seed})")


@data_app.command("info")
@handle_errors
def info(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Dataset name under <base-dir>/data/.")],
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Where to write the contact sheet PNG (default: <dataset>/contact_sheet.png).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    max_classes: Annotated[int, typer.Option("--max-classes", help="Rows (classes) in the contact sheet.")] = 12,
    per_class: Annotated[int, typer.Option("--per-class", help="Samples per class in the contact sheet.")] = 10,
) -> None:
    """Print a dataset's size, classes and image shape, and write a PNG contact sheet per class."""
    from lordkit.data.info import contact_sheet, summary

    ds = _open(ctx, name)
    s = summary(ds)
    s["contact_sheet"] = str(contact_sheet(ds, sheet or ds.path / "contact_sheet.png",
                                           max_classes=max_classes, per_class=per_class))
    if as_json:
        say(json.dumps(s, indent=2))
        return
    table = Table(title=f"dataset {name}", show_header=False)
    for key, value in s.items():
        if value is None or key == "face_template" and not value:
            continue
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    out_console.print(table)


@data_app.command("list")
@handle_errors
def list_(ctx: typer.Context) -> None:
    """List the datasets under <base-dir>/data/."""
    from lordkit.data.store import Dataset
    from lordkit.errors import LordkitError

    root = get_base(ctx) / "data"
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if not names:
        say(f"no datasets in {root}")
        return
    for n in names:
        try:
            ds = Dataset(root / n)
            m = ds.meta
            say(f"{n}\t{m.dataset_id}\t{m.n_imgs} images\t{m.n_classes} classes\t{m.img_size}x{m.img_size}x{m.channels}")
        except LordkitError as e:
            say(f"{n}\t(unreadable: {e})")


def register(app: typer.Typer) -> None:
    app.command("preprocess")(preprocess)
    app.command("split-classes")(split_classes)
    app.command("split-samples")(split_samples)
    app.add_typer(data_app, name="data")
