"""smallNORB from its binary matrix files, set up as in the LORD paper.

Every stereo image is its own sample. Class = (category, instance, elevation, lighting, camera),
named like "c2_i7_e3_l0_left"; content = azimuth (0..17). The factors are also kept per image
(category, instance, elevation, lighting, camera) so evaluations can group by any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from lordkit.data.sources import Chunk, Loaded, Options, Source, register, sorted_class_map
from lordkit.errors import LordkitError

CHUNK_IMGS = 512  # samples (single-camera images) per Chunk
SETS = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training",
        "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}
PARTS = ("dat", "cat", "info")
# NORB matrix magic numbers -> element type; the packed (0x1E3D4C52) format is never used by smallNORB.
NORB_DTYPES = {0x1E3D4C51: np.dtype("<f4"), 0x1E3D4C53: np.dtype("<f8"), 0x1E3D4C54: np.dtype("<i4"),
               0x1E3D4C55: np.dtype("u1"), 0x1E3D4C56: np.dtype("<i2")}
N_AZIMUTHS = 18
CAMERAS = ("left", "right")
# Valid range of each label column: cat, then the four info columns.
RANGES = {"category": (0, 4), "instance": (0, 9), "elevation": (0, 8), "azimuth": (0, 34), "lighting": (0, 5)}


@dataclass
class _Matrix:
    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # bytes before the data


def _read_header(path: Path) -> _Matrix:
    """Parse and check a NORB matrix header; the file length must match its dims."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LordkitError(f"{path}: file is empty or truncated (no NORB header)")
        magic, ndim = np.frombuffer(head, "<i4").tolist()
        if magic & 0xFFFFFFFF not in NORB_DTYPES:
            hint = " (gzip-compressed: run gunzip on it first)" if head[:2] == b"\x1f\x8b" else ""
            raise LordkitError(f"{path}: not a NORB matrix file (magic 0x{magic & 0xFFFFFFFF:08x}){hint}")
        if not 1 <= ndim <= 16:
            raise LordkitError(f"{path}: invalid NORB header (ndim {ndim})")
        dims_raw = f.read(4 * max(3, ndim))  # the format always stores at least 3 dims
    if len(dims_raw) < 4 * max(3, ndim):
        raise LordkitError(f"{path}: truncated NORB header")
    shape = tuple(np.frombuffer(dims_raw, "<i4")[:ndim].tolist())
    if any(d < 1 for d in shape):
        raise LordkitError(f"{path}: invalid NORB dims {shape}")
    dtype = NORB_DTYPES[magic & 0xFFFFFFFF]
    offset = 8 + len(dims_raw)
    want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != want:
        what = "truncated" if size < want else "longer than its header says"
        raise LordkitError(f"{path}: file is {what} ({size} bytes, header {dtype} {shape} needs {want})")
    return _Matrix(path, dtype, shape, offset)


def _read_all(m: _Matrix) -> np.ndarray:
    data = np.fromfile(m.path, m.dtype, count=int(np.prod(m.shape)), offset=m.offset)
    if data.size != np.prod(m.shape):
        raise LordkitError(f"{m.path}: file is truncated")
    return data.reshape(m.shape)


def _open_set(folder: Path, stem: str) -> tuple[_Matrix, np.ndarray] | None:
    """The set's image matrix and its (N, 5) labels (category, instance, elevation, azimuth, lighting)."""
    paths = {part: folder / f"{stem}-{part}.mat" for part in PARTS}
    present = {part: p for part, p in paths.items() if p.is_file()}
    if not present:
        return None
    if len(present) < len(PARTS):
        missing = ", ".join(p.name for part, p in paths.items() if part not in present)
        raise LordkitError(f"smallNORB set {stem} in {folder} is incomplete: {missing} not found")
    dat, cat, info = (_read_header(paths[part]) for part in PARTS)
    n = dat.shape[0]
    if dat.dtype != np.uint8 or len(dat.shape) != 4 or dat.shape[1] != 2:
        raise LordkitError(f"{dat.path}: expected a uint8 (N, 2, H, W) stereo image matrix, "
                           f"found {dat.dtype} {dat.shape}")
    if cat.dtype.kind not in "iu" or cat.shape != (n,):
        raise LordkitError(f"{cat.path}: expected integer ({n},) categories, found {cat.dtype} {cat.shape}")
    if info.dtype.kind not in "iu" or info.shape != (n, 4):
        raise LordkitError(f"{info.path}: expected integer ({n}, 4) info, found {info.dtype} {info.shape}")
    labels = np.concatenate([_read_all(cat)[:, None], _read_all(info)], axis=1).astype(np.int64)  # (N, 5)
    for col, (name, (lo, hi)) in enumerate(RANGES.items()):
        bad = (labels[:, col] < lo) | (labels[:, col] > hi)
        if bad.any():
            where = cat.path if col == 0 else info.path
            row = int(np.flatnonzero(bad)[0])
            raise LordkitError(f"{where}: {name} {labels[row, col]} outside {lo}..{hi} (row {row})")
    if (labels[:, 3] % 2).any():
        raise LordkitError(f"{info.path}: azimuths must be even (0, 2, .., 34)")
    return dat, labels


def _load(dat: _Matrix, rec_start: int, rec_stop: int, class_ids: np.ndarray, content_ids: np.ndarray,
          per_image: dict[str, np.ndarray], first_sample: int) -> Loaded:
    # Read only this slice of records from the ~450 MB matrix.
    rec_items = int(np.prod(dat.shape[1:]))
    count = (rec_stop - rec_start) * rec_items
    data = np.fromfile(dat.path, np.uint8, count=count, offset=dat.offset + rec_start * rec_items)
    if data.size != count:
        raise LordkitError(f"{dat.path}: file is truncated (records {rec_start}:{rec_stop} missing)")
    h, w = dat.shape[2:]
    images = data.reshape(-1, h, w, 1)  # (records * 2 cameras, h, w, 1): left, right, left, ...
    s = slice(first_sample, first_sample + len(images))
    return Loaded(images=images, class_ids=class_ids[s], content_ids=content_ids[s],
                  per_image={k: v[s] for k, v in per_image.items()})


@register("smallnorb", "smallNORB toys (class = category, instance, elevation, lighting, camera; content = azimuth)")
def open_smallnorb(path: Path, opts: Options) -> Source:
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise LordkitError(f"smallNORB folder not found: {folder}")
    sets = {split: s for split, stem in SETS.items() if (s := _open_set(folder, stem)) is not None}
    if not sets:
        expected = " and/or ".join(f"{stem}-{{dat,cat,info}}.mat" for stem in SETS.values())
        raise LordkitError(f"no smallNORB files in {folder}: expected {expected}")

    # One sample per (record, camera), cameras interleaved as they lie in the dat file.
    labels = np.concatenate([np.repeat(lab, 2, axis=0) for _, lab in sets.values()])  # (S, 5)
    camera = np.tile(np.arange(2), len(labels) // 2)  # (S,)
    factors = np.concatenate([labels[:, [0, 1, 2, 4]], camera[:, None]], axis=1)  # cat, inst, elev, light, cam
    combos, inverse = np.unique(factors, axis=0, return_inverse=True)
    combo_names = [f"c{c}_i{i}_e{e}_l{li}_{CAMERAS[k]}" for c, i, e, li, k in combos.tolist()]
    names, ids = sorted_class_map(combo_names)
    class_ids = np.array([ids[n] for n in combo_names], np.int64)[inverse.reshape(-1)]
    content_ids = labels[:, 3] // 2
    per_image = {"category": labels[:, 0], "instance": labels[:, 1], "elevation": labels[:, 2],
                 "lighting": labels[:, 4], "camera": camera.astype(np.int64)}

    chunks: list[Chunk] = []
    first_sample = 0
    recs_per_chunk = CHUNK_IMGS // 2
    for split, (dat, _) in sets.items():
        n = dat.shape[0]
        for a in range(0, n, recs_per_chunk):
            b = min(a + recs_per_chunk, n)
            chunks.append(Chunk(f"{dat.path.name}[{a}:{b}]", 2 * (b - a),
                                partial(_load, dat, a, b, class_ids, content_ids, per_image, first_sample)))
            first_sample += 2 * (b - a)
    return Source(
        class_names=names, channels=1, chunks=chunks, content_factors=["azimuth"],
        extra={"content_grid": {"azimuth": N_AZIMUTHS}, "class_factors": ["category", "instance", "elevation",
                                                                       "lighting", "camera"],
               "split_sizes": {split: 2 * dat.shape[0] for split, (dat, _) in sets.items()}},
    )
