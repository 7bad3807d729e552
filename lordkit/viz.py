"""Pictures a person looks at: labelled image grids written as PNG (atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from lordkit.fsutil import atomic_write_bytes


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3), uint8 or float in [0, 1] -> (H, W, 3) uint8."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img


def _label(text: str, width: int, height: int) -> np.ndarray:
    tile = np.full((height, width, 3), 255, np.uint8)
    scale = 0.4
    text = text if len(text) <= 24 else text[:23] + "…"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > width - 4 and len(text) > 2:
        text = text[:-2] + "…" if not text.endswith("…") else text[:-2] + "…"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(tile, text.replace("…", "."), (max(2, (width - tw) // 2), (height + th) // 2),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], cell: int = 64, pad: int = 2,
               row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
               label_width: int = 96) -> np.ndarray:
    """A white-padded grid of images (None = empty cell), each scaled to cell x cell; RGB uint8."""
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    left = label_width if row_labels else 0
    top = 20 if col_labels else 0
    h = top + n_rows * (cell + pad) + pad
    w = left + n_cols * (cell + pad) + pad
    out = np.full((h, w, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        y = top + pad + i * (cell + pad)
        if row_labels:
            out[y:y + cell, :left] = _label(row_labels[i], left, cell)
        for j, img in enumerate(row):
            if img is None:
                continue
            x = left + pad + j * (cell + pad)
            tile = to_rgb_uint8(img)
            if tile.shape[:2] != (cell, cell):
                interp = cv2.INTER_NEAREST if tile.shape[0] < cell else cv2.INTER_AREA
                tile = cv2.resize(tile, (cell, cell), interpolation=interp)
            out[y:y + cell, x:x + cell] = tile
    if col_labels:
        for j, text in enumerate(col_labels[:n_cols]):
            x = left + pad + j * (cell + pad)
            out[:top, x:x + cell] = _label(text, cell, top)
    return out


def transfer_grid(contents: Sequence[np.ndarray] | np.ndarray, classes: Sequence[np.ndarray | None] | np.ndarray,
                  generated: Sequence[Sequence[np.ndarray]] | np.ndarray, *, channels_first: bool = False,
                  cell: int = 64, pad: int = 2, row_labels: Sequence[str] | None = None,
                  col_labels: Sequence[str] | None = None) -> np.ndarray:
    """The papers' layout: top row the content images, left column the class images (None where a
    class has no picture), cell (j, i) = content i drawn in class j.

    contents (K, H, W, C), classes (R, H, W, C), generated (R, K, H, W, C); uint8 or float in [0, 1].
    channels_first: the arrays are (..., C, H, W) as networks output them. Labels include the
    top-left corner cell."""
    def hwc(img: np.ndarray | None) -> np.ndarray | None:
        if img is None or not channels_first:
            return img
        return np.moveaxis(np.asarray(img), 0, -1)

    rows = [[None] + [hwc(c) for c in contents]]
    for j, ref in enumerate(classes):
        rows.append([hwc(ref)] + [hwc(generated[j][i]) for i in range(len(contents))])
    return image_grid(rows, cell=cell, pad=pad, row_labels=row_labels, col_labels=col_labels)


def sample_positions(class_ids: np.ndarray, n_classes: int, k: int = 8, seed: int = 0) -> np.ndarray:
    """Positions of k images of as many different classes as possible (seeded): the images of a
    sample grid, fixed for a whole training run."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.flatnonzero(np.bincount(class_ids, minlength=n_classes) > 0))[:k]
    picks = [int(rng.choice(np.flatnonzero(class_ids == c))) for c in classes]
    while len(picks) < min(k, len(class_ids)):
        picks.append(int(rng.integers(len(class_ids))))
    return np.asarray(picks[:k], dtype=np.int64)


def save_png(path: str | Path, img: np.ndarray) -> Path:
    """Write an RGB (or grey) uint8 image as PNG via a temporary file and rename."""
    img = to_rgb_uint8(img)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)
