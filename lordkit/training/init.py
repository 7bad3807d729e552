"""Content codes initialised from the data: principal components of what differs within each class.

With uniform(-0.05, 0.05) starting codes under content noise of std 0.5-1, the codes carry nothing the
generator can read at first; on sparse images (small objects on a plain background) stage 1 can then
settle on drawing the background for every code. Codes that start as the images' coordinates along
their main directions of variation within their class are informative from step 0.

Two kinds of features are fitted (`mode`):

- "signed": each image minus its class's mean image. On a black background every colour is a
  positive deviation, and "an object here" is one direction shared by all classes. On a grey
  background the classes' colours lie on both sides of the grey, the same content gives opposite
  signs in different classes, and the shared components follow the content poorly.
- "deviation": how far each pixel is from its class's median image (for sparse objects, the
  background), averaged over the channels, minus that map's class mean: a grey "where this image
  differs from its class" map whatever the colours. Content that is only a colour (hue as a content
  factor) is not in these maps; stage 1 learns it from there.
- "colour": the "deviation" components, plus two dimensions for hue: each image's chroma (two
  opponent axes, red-green and yellow-blue) summed over its pixels and divided by the summed chroma
  size, so that an object's hue gives the same pair whatever its size and place, on any grey
  background (black, mid-grey, light or textured: grey pixels carry no chroma), minus its class
  mean. The pair starts at HUE_GAIN times the std of the other dimensions. Colour images only, and
  only where colour varies within a class; otherwise those dimensions go to the "deviation"
  components.

`blur` > 0 (latent.pca_blur) blurs every feature map with a Gaussian of std blur x side before the
fit and the projection: thin or hollow shapes of different classes at one place and size share
almost no pixel, so unblurred components follow a content differently in each class; blurred, their
maps overlap as solid shapes' do (docs/training-recipes.md, benchmarks/code_alignment.py).

The components are fitted on a seeded subsample of at most `max_fit` images, pooled to at most 32 px,
in float64 on the CPU: the same codes on every rank and for every world size.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lordkit import losses
from lordkit.data.store import Dataset

FIT_SIDE = 32  # images are area-pooled to at most this side before the fit and the projection
MAX_FIT = 4096  # images the components are fitted on
MEDIAN_PER_CLASS = 256  # images of a class its median image is taken over (seeded subsample)
CHUNK = 4096  # images projected at a time
MODES = ("signed", "deviation", "colour")


def _pooled(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """Images of rows as float64 (n, h, w, c) in [0, 1], area-pooled to at most FIT_SIDE px."""
    order = np.argsort(rows)
    x = torch.from_numpy(np.ascontiguousarray(ds.images[rows[order]])).permute(0, 3, 1, 2).double().div_(255.0)
    if x.shape[-1] > FIT_SIDE:
        x = F.adaptive_avg_pool2d(x, FIT_SIDE)
    return x.permute(0, 2, 3, 1).numpy()[np.argsort(order)]  # back to the order of rows


class _Features:
    """Per-image feature rows of one mode, with the class-wise centring both modes need."""

    def __init__(self, ds: Dataset, mode: str, rng: np.random.Generator, blur: float = 0.0):
        self.ds, self.mode, self.blur = ds, mode, blur
        self.class_ids = np.asarray(ds.class_ids)
        self.n_classes = max(ds.n_classes, int(self.class_ids.max()) + 1)
        self.medians = None
        if mode in ("deviation", "colour"):  # each class's median image, over a seeded subsample of its images
            side = _pooled(ds, np.arange(1)).shape[1:]
            self.medians = np.zeros((self.n_classes, *side))
            for c in range(self.n_classes):
                rows = np.flatnonzero(self.class_ids == c)
                if len(rows):
                    rows = np.sort(rng.choice(rows, min(len(rows), MEDIAN_PER_CLASS), replace=False))
                    self.medians[c] = np.median(_pooled(ds, rows), axis=0)
        # Class means of the features, over the whole dataset in chunks.
        sums: np.ndarray | None = None
        for start in range(0, len(ds), CHUNK):
            rows = np.arange(start, min(len(ds), start + CHUNK))
            f = self._uncentred(rows)
            if sums is None:
                sums = np.zeros((self.n_classes, f.shape[1]))
            np.add.at(sums, self.class_ids[rows], f)
        counts = np.maximum(np.bincount(self.class_ids, minlength=self.n_classes), 1)
        self.means = sums / counts[:, None]

    def _uncentred(self, rows: np.ndarray) -> np.ndarray:
        x = _pooled(self.ds, rows)
        if self.mode in ("deviation", "colour"):
            x = np.abs(x - self.medians[self.class_ids[rows]]).mean(axis=-1)
        if self.blur > 0:  # a Gaussian of std blur x side, per map (per channel for "signed")
            sigma = self.blur * x.shape[1]
            x = np.stack([cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for m in x])
        return x.reshape(len(rows), -1)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) features minus their class means."""
        return self._uncentred(rows) - self.means[self.class_ids[rows]]


# The hue pair starts at this multiple of the other dimensions' std: at 1x, stage 1 on hue over a
# mid-grey background (lap1 loss) drew every object dark grey in two of six runs, the generator never
# reading the pair; at 3x it drew the hues (docs/training-recipes.md).
HUE_GAIN = 3.0
HUE_WITHIN_SHARE = 0.5  # "colour" keeps its hue pair where at least this share of its spread is within classes


def hue_pairs(ds: Dataset, class_ids: np.ndarray, n_classes: int) -> np.ndarray | None:
    """(len(ds), 2): each image's hue direction (lordkit.losses.hue_direction of the image pooled to
    at most FIT_SIDE px: the mean hue direction of its coloured pixels), minus its class mean; None for one-channel images or where the pair's spread is mostly between classes
    (colour a class attribute)."""
    if ds.meta.channels != 3:
        return None
    pairs = np.zeros((len(ds), 2))
    for start in range(0, len(ds), CHUNK):
        rows = np.arange(start, min(len(ds), start + CHUNK))
        pairs[rows] = losses.hue_direction(torch.from_numpy(_pooled(ds, rows)).permute(0, 3, 1, 2)).numpy()
    means = np.zeros((n_classes, 2))
    np.add.at(means, class_ids, pairs)
    means /= np.maximum(np.bincount(class_ids, minlength=n_classes), 1)[:, None]
    within = pairs - means[class_ids]
    total = (pairs - pairs.mean(axis=0)).std()
    if total <= 1e-9 or within.std() < HUE_WITHIN_SHARE * total:
        return None
    return within


def pca_content_codes(ds: Dataset, dim: int, std: float, seed: int, mode: str = "deviation",
                      max_fit: int = MAX_FIT, blur: float = 0.0) -> np.ndarray:
    """(len(ds), dim) float32 start codes: the images' features (`mode`, minus their class means)
    projected on the top `dim` principal components of such features, each dimension scaled to `std`
    over the dataset ("colour": the last two are the hue pair, see hue_pairs). Dimensions beyond the
    features' rank (fewer images or pixels than dim, constant images) are left at 0."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    n = len(ds)
    codes = np.zeros((n, dim), np.float32)
    if n < 2:
        return codes
    rng = np.random.default_rng(seed + 7919)
    features = _Features(ds, mode, rng, blur)
    hues = hue_pairs(ds, features.class_ids, features.n_classes) if mode == "colour" and dim > 2 else None
    if hues is not None:  # the last two dimensions: the hue pair, each scaled to HUE_GAIN * std
        dim -= 2
        codes[:, dim:] = hues * (HUE_GAIN * std / np.maximum(hues.std(axis=0), 1e-12))

    # Components of a seeded subsample's features.
    fit = np.sort(rng.choice(n, min(n, max_fit), replace=False))
    _, s, vt = np.linalg.svd(features(fit), full_matrices=False)
    k = int(min(dim, (s > s[0] * 1e-6).sum() if s.size and s[0] > 0 else 0))
    if k == 0:
        return codes
    basis = vt[:k].T  # (D, k)

    # Project every image, then scale each dimension to std over the dataset.
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(n, start + CHUNK))
        codes[rows, :k] = features(rows) @ basis
    sd = codes[:, :k].std(axis=0)
    codes[:, :k] *= std / np.maximum(sd, 1e-12)
    return codes
