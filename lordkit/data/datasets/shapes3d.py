"""3D Shapes (DeepMind) from 3dshapes.h5: class = object shape, content = the other five factors.

Each factor's float values are numbered by sorted unique value; the content id is the row-major
flattening of (floor_hue, wall_hue, object_hue, scale, orientation) over the sizes in
meta.extra["content_grid"], whose values are kept in meta.extra["factor_values"].
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lordkit.data.sources import Chunk, Loaded, Options, Source, register, sorted_class_map
from lordkit.errors import LordkitError

CHUNK_IMGS = 1024  # rows per Chunk: 12 MB of 64x64 RGB, so 8 workers hold ~100 MB raw
FILE_NAME = "3dshapes.h5"
FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")  # label columns
CONTENT_FACTORS = ["floor_hue", "wall_hue", "object_hue", "scale", "orientation"]
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")  # official order of the `shape` label 0..3
IMG_SHAPE = (64, 64, 3)
DECIMALS = 6  # labels are rounded before numbering so float noise cannot split one value in two


def _import_h5py() -> Any:
    try:
        import h5py  # only needed for this format; part of the `train` extra
    except ImportError:
        raise LordkitError("reading 3D Shapes needs h5py: pip install 'lordkit[train]'") from None
    return h5py


def _open_h5(h5py: Any, path: Path) -> Any:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise LordkitError(f"{path}: not a readable HDF5 file ({e})") from None


def _load(h5py: Any, path: Path, start: int, stop: int, class_ids: np.ndarray, content_ids: np.ndarray) -> Loaded:
    # Each chunk opens its own handle: h5py file objects are not meant to be shared across threads.
    with _open_h5(h5py, path) as f:
        try:
            images = f["images"][start:stop]  # (n, 64, 64, 3)
        except (OSError, ValueError, KeyError) as e:
            raise LordkitError(f"{path}: cannot read images[{start}:{stop}] ({e})") from None
    return Loaded(images=images, class_ids=class_ids[start:stop], content_ids=content_ids[start:stop])


@register("shapes3d", "DeepMind 3D Shapes from 3dshapes.h5 (class = shape, content = hues, scale, orientation)")
def open_shapes3d(path: Path, opts: Options) -> Source:
    file = path / FILE_NAME if path.is_dir() else path
    if not file.is_file():
        raise LordkitError(f"3D Shapes file not found: {file} (expected {FILE_NAME} or a folder holding it)")
    h5py = _import_h5py()
    with _open_h5(h5py, file) as f:
        missing = [k for k in ("images", "labels") if k not in f or not isinstance(f[k], h5py.Dataset)]
        if missing:
            raise LordkitError(f"{file}: not a 3D Shapes file (missing dataset {', '.join(missing)})")
        images, labels_ds = f["images"], f["labels"]
        n = images.shape[0] if images.ndim else 0
        if images.dtype != np.uint8 or images.shape[1:] != IMG_SHAPE:
            raise LordkitError(f"{file}: images must be uint8 (N, {', '.join(map(str, IMG_SHAPE))}), "
                               f"found {images.dtype} {images.shape}")
        if labels_ds.shape != (n, len(FACTORS)) or labels_ds.dtype.kind not in "fiu":
            raise LordkitError(f"{file}: labels must be numeric ({n}, {len(FACTORS)}) to match images, "
                               f"found {labels_ds.dtype} {labels_ds.shape}")
        try:
            # Labels are small (48 bytes a row): read them whole to number every factor's values.
            labels = labels_ds[()].astype(np.float64)  # (N, 6)
        except (OSError, ValueError) as e:
            raise LordkitError(f"{file}: cannot read labels ({e})") from None
    if n == 0:
        raise LordkitError(f"{file}: holds no images")

    values: dict[str, list[float]] = {}
    index: dict[str, np.ndarray] = {}
    for col, name in enumerate(FACTORS):
        _, first, inverse = np.unique(np.round(labels[:, col], DECIMALS), return_index=True, return_inverse=True)
        values[name], index[name] = labels[first, col].tolist(), inverse.reshape(-1)
    shape_codes = np.array(values["shape"])
    if not np.all(np.isin(shape_codes, np.arange(len(SHAPE_NAMES)))):
        raise LordkitError(f"{file}: shape labels must be 0..{len(SHAPE_NAMES) - 1}, found {values['shape']}")
    present = [SHAPE_NAMES[int(c)] for c in shape_codes]
    names, ids = sorted_class_map(present)
    class_ids = np.array([ids[s] for s in present], np.int64)[index["shape"]]
    grid = {name: len(values[name]) for name in CONTENT_FACTORS}
    content_ids = np.ravel_multi_index([index[name] for name in CONTENT_FACTORS], list(grid.values())).astype(np.int64)

    chunks = [Chunk(f"{file.name}[{a}:{min(a + CHUNK_IMGS, n)}]", min(CHUNK_IMGS, n - a),
                    partial(_load, h5py, file, a, min(a + CHUNK_IMGS, n), class_ids, content_ids))
              for a in range(0, n, CHUNK_IMGS)]
    return Source(class_names=names, channels=3, chunks=chunks, content_factors=list(CONTENT_FACTORS),
                  extra={"content_grid": grid, "factor_values": {k: values[k] for k in CONTENT_FACTORS}})
