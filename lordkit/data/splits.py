"""Reproducible train/test splits of a store, by held-out classes or by held-out samples.

Both outputs keep the full class list (and so n_classes and the meaning of every class id), and
record where each image came from (`parent_index`) and how the split was made (meta.extra["split"]).
The two parts are one unit: both carry the same split id and name each other (`sibling`), they are
put in place together (fsutil.staged_dirs: after a crash the next command finishes or drops the
pair, never one part of each), and opening a part whose sibling holds another split is refused.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from lordkit.data.store import Dataset, DatasetMeta, StoreWriter
from lordkit.errors import LordkitError
from lordkit.fsutil import staged_dirs

DEFAULT_SEED = 1234
_COPY_ROWS = 4096  # images copied per slice: bounded RAM whatever the dataset size


def _write_subset(ds: Dataset, idx: np.ndarray, out: Path, split_info: dict) -> None:
    writer = StoreWriter(out, ds.meta.img_size, ds.meta.channels)
    try:
        for start in range(0, len(idx), _COPY_ROWS):
            rows = idx[start:start + _COPY_ROWS]
            per_image = {k: v[rows] for k, v in ds.per_image.items() if k != "parent_index"}
            per_image["parent_index"] = rows
            writer.add(np.asarray(ds.images[rows]), ds.class_ids[rows], ds.content_ids[rows], per_image)
        m = ds.meta
        meta = DatasetMeta(dataset_id=m.dataset_id, class_names=list(m.class_names), img_size=m.img_size,
                           channels=m.channels, n_imgs=len(idx), content_factors=list(m.content_factors),
                           source_path=m.source_path, face_template=m.face_template,
                           extra={**m.extra, "split": split_info})
        writer.close(meta)
    except BaseException:
        writer.abort()
        raise


def _write_pair(ds: Dataset, train_idx: np.ndarray, test_idx: np.ndarray, train_dir: Path, test_dir: Path,
                info: dict, force: bool) -> None:
    if Path(train_dir).resolve() == Path(test_dir).resolve():
        raise LordkitError("--train-data-name and --test-data-name must differ")
    if Path(train_dir).parent.resolve() != Path(test_dir).parent.resolve():
        raise LordkitError("the train and test parts of a split must be in one directory")
    train_dir, test_dir = Path(train_dir), Path(train_dir).parent / Path(test_dir).name
    for d in (train_dir, test_dir):
        if Path(d).resolve() == ds.path.resolve():
            raise LordkitError(f"a split output cannot replace its input dataset {ds.path}")
        if Path(d).exists() and not force:
            raise LordkitError(f"dataset {d} already exists; pass --force to replace it")
    # Both outputs are staged, then put in place as one unit.
    info = {**info, "id": uuid.uuid4().hex}
    with staged_dirs([Path(train_dir), Path(test_dir)], force=force, what="dataset") as (tmp_train, tmp_test):
        _write_subset(ds, np.sort(train_idx), tmp_train, {**info, "part": "train", "sibling": Path(test_dir).name})
        _write_subset(ds, np.sort(test_idx), tmp_test, {**info, "part": "test", "sibling": Path(train_dir).name})


def split_classes(ds: Dataset, train_dir: Path, test_dir: Path, n_test_classes: int,
                  seed: int = DEFAULT_SEED, force: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `n_test_classes` whole classes (chosen with `seed`); returns (train_idx, test_idx)."""
    present = np.flatnonzero(ds.class_counts() > 0)
    if not 1 <= n_test_classes < len(present):
        raise LordkitError(f"--num-test-classes must be between 1 and {len(present) - 1} "
                           f"({len(present)} classes have images), got {n_test_classes}")
    rng = np.random.default_rng(seed)
    test_classes = np.sort(rng.choice(present, size=n_test_classes, replace=False))
    is_test = np.isin(ds.class_ids, test_classes)
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    info = {"kind": "classes", "parent": ds.path.name, "seed": seed,
            "test_classes": [ds.meta.class_names[c] for c in test_classes]}
    _write_pair(ds, train_idx, test_idx, train_dir, test_dir, info, force)
    return train_idx, test_idx


def split_samples(ds: Dataset, train_dir: Path, test_dir: Path, test_split: float,
                  seed: int = DEFAULT_SEED, force: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a `test_split` fraction of the images, chosen with `seed`; returns (train_idx, test_idx)."""
    if not 0.0 < test_split < 1.0:
        raise LordkitError(f"--test-split must be a fraction between 0 and 1, got {test_split}")
    n = len(ds)
    n_test = int(round(n * test_split))
    if n_test < 1 or n_test >= n:
        raise LordkitError(f"--test-split {test_split} of {n} images leaves an empty train or test set")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    info = {"kind": "samples", "parent": ds.path.name, "seed": seed, "test_split": test_split}
    _write_pair(ds, train_idx, test_idx, train_dir, test_dir, info, force)
    return np.sort(train_idx), np.sort(test_idx)
