"""Content codes initialised from the data: the images' principal components, class means removed.

With uniform(-0.05, 0.05) starting codes under content noise of std 0.5-1, the codes carry nothing the
generator can read at first; on sparse images (small objects on a plain background) the loss-optimal
output for uninformative codes is the background, and stage 1 can settle there for good (a black image
for every code). Codes that start as the images' coordinates along their main directions of variation
are informative from step 0. Each image's own class mean is subtracted before the components are fitted
and the codes projected, so what the start codes hold is what varies within a class — content — and
little of the class itself (the leakage LORD's noise and decay must otherwise remove).

The components are fitted on a seeded subsample of at most `max_fit` images, pooled to at most 32 px,
in float64 on the CPU: the same codes on every rank and for every world size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lordkit.data.store import Dataset

FIT_SIDE = 32  # images are area-pooled to at most this side before the fit and the projection
MAX_FIT = 4096  # images the components are fitted on
CHUNK = 4096  # images projected at a time


def _pooled(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """Images of rows as float64 (n, D) in [0, 1], area-pooled to at most FIT_SIDE px."""
    x = torch.from_numpy(np.ascontiguousarray(ds.images[np.sort(rows)])).permute(0, 3, 1, 2).double().div_(255.0)
    if x.shape[-1] > FIT_SIDE:
        x = F.adaptive_avg_pool2d(x, FIT_SIDE)
    out = x.reshape(len(rows), -1).numpy()
    return out[np.argsort(np.argsort(rows))]  # back to the order of rows


def pca_content_codes(ds: Dataset, dim: int, std: float, seed: int, max_fit: int = MAX_FIT) -> np.ndarray:
    """(len(ds), dim) float32 start codes: each image minus its class mean, projected on the top `dim`
    principal components of such residuals, each dimension scaled to `std` over the dataset. Dimensions
    beyond the data's rank (fewer images or pixels than dim, constant images) are left at 0."""
    n = len(ds)
    codes = np.zeros((n, dim), np.float32)
    if n < 2:
        return codes
    class_ids = np.asarray(ds.class_ids)
    n_classes = max(ds.n_classes, int(class_ids.max()) + 1)
    # Class means over the whole dataset, in chunks.
    sums: np.ndarray | None = None
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(n, start + CHUNK))
        x = _pooled(ds, rows)
        if sums is None:
            sums = np.zeros((n_classes, x.shape[1]))
        np.add.at(sums, class_ids[rows], x)
    counts = np.maximum(np.bincount(class_ids, minlength=n_classes), 1)
    means = sums / counts[:, None]

    # Components of the within-class residuals of a seeded subsample.
    rng = np.random.default_rng(seed + 7919)
    fit = np.sort(rng.choice(n, min(n, max_fit), replace=False))
    resid = _pooled(ds, fit) - means[class_ids[fit]]
    _, s, vt = np.linalg.svd(resid, full_matrices=False)
    k = int(min(dim, (s > s[0] * 1e-6).sum() if s.size and s[0] > 0 else 0))
    if k == 0:
        return codes
    basis = vt[:k].T  # (D, k)

    # Project every image, then scale each dimension to std over the dataset.
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(n, start + CHUNK))
        codes[rows, :k] = (_pooled(ds, rows) - means[class_ids[rows]]) @ basis
    sd = codes[:, :k].std(axis=0)
    codes[:, :k] *= std / np.maximum(sd, 1e-12)
    return codes
