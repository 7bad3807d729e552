"""What a person wants to know about a dataset: its numbers, and a contact sheet of samples per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lordkit.data.store import Dataset
from lordkit.viz import image_grid, save_png


def _spread(counts: np.ndarray) -> dict[str, float]:
    if not len(counts):
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}


def summary(ds: Dataset) -> dict[str, Any]:
    counts = ds.class_counts()
    m = ds.meta
    size_bytes = sum(f.stat().st_size for f in ds.path.iterdir() if f.is_file())
    return {
        "path": str(ds.path),
        "dataset_id": m.dataset_id,
        "n_imgs": m.n_imgs,
        "n_classes": m.n_classes,
        "classes_with_images": int((counts > 0).sum()),
        "image_shape": [m.img_size, m.img_size, m.channels],
        "imgs_per_class": _spread(counts[counts > 0]),
        "content_factors": m.content_factors,
        "n_contents": int(len(np.unique(ds.content_ids[ds.content_ids >= 0]))) if m.n_imgs else 0,
        "face_template": m.face_template is not None,
        "size_mb": round(size_bytes / 2**20, 2),
        "split": m.extra.get("split"),
        "n_failed": m.extra.get("n_failed", 0),
        "source_path": m.source_path,
        "lordkit_version": m.lordkit_version,
    }


def contact_sheet(ds: Dataset, out: Path, max_classes: int = 12, per_class: int = 10, seed: int = 0,
                  cell: int = 64) -> Path:
    """PNG with one row per class (up to max_classes, spread over the class range), random samples."""
    rng = np.random.default_rng(seed)
    present = np.flatnonzero(ds.class_counts() > 0)
    if len(present) > max_classes:
        present = present[np.linspace(0, len(present) - 1, max_classes).round().astype(int)]
    rows, labels = [], []
    for c in present:
        idx = np.flatnonzero(ds.class_ids == c)
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        rows.append([np.asarray(ds.images[i]) for i in pick])
        labels.append(f"{c}: {ds.meta.class_names[c]}")
    return save_png(out, image_grid(rows, cell=cell, row_labels=labels, label_width=120))
