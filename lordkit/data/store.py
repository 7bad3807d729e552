"""The dataset store: one directory per preprocessed dataset, readable without loading it into RAM.

Layout of `<base>/data/<name>/`:
    images.npy        uint8 (N, H, W, C), opened memory-mapped
    class_ids.npy     int64 (N,), 0..n_classes-1, numbered by sorted class name
    content_ids.npy   int64 (N,), -1 where the dataset has no content labels
    <key>.npy         optional int64 (N,) per-image arrays named in meta["per_image"]
    meta.json         DatasetMeta

The two parts of a split (lordkit.data.splits) carry one split id and their sibling's name in
meta.extra["split"]; a part whose sibling names it back but holds another split is refused.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import lordkit
from lordkit.errors import LordkitError
from lordkit.fsutil import atomic_write_json, recover_tree

STORE_FORMAT = "lordkit-dataset/1"
_HEADER_BYTES = 128  # fixed .npy header size so N can be patched in once the last image is written


@dataclass
class DatasetMeta:
    dataset_id: str  # reader that produced it: mnist, celeba, synthetic, ...
    class_names: list[str]  # index = class id
    img_size: int  # images are img_size x img_size
    channels: int  # 1 (grey) or 3 (RGB)
    n_imgs: int
    content_factors: list[str] = field(default_factory=list)  # names of what content ids encode
    source_path: str | None = None
    face_template: list[list[float]] | None = None  # landmarks (x, y) in [0, 1] of the crop, faces only
    per_image: list[str] = field(default_factory=list)  # extra per-image int64 arrays stored beside
    extra: dict[str, Any] = field(default_factory=dict)  # reader-specific facts (content grid, ...)
    lordkit_version: str = lordkit.__version__
    format: str = STORE_FORMAT

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["n_classes"] = self.n_classes
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: Path) -> "DatasetMeta":
        d = dict(d)
        d.pop("n_classes", None)
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in d]
        if missing:
            raise LordkitError(f"{where}: metadata lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A version 1.0 .npy header padded to exactly _HEADER_BYTES."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    text = repr(d).encode("latin1")
    pad = _HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {_HEADER_BYTES}-byte header")
    body = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


class StoreWriter:
    """Append images and labels chunk by chunk into a (staging) directory; `close` writes metadata.

    Images stream straight to disk, so a dataset larger than RAM can be written.
    """

    def __init__(self, directory: Path, img_size: int, channels: int):
        self.dir = Path(directory)
        self.img_size, self.channels = img_size, channels
        self.n_imgs = 0
        self._f = open(self.dir / "images.npy", "wb")
        self._f.write(_npy_header((0, img_size, img_size, channels), np.uint8))
        self._class_ids: list[np.ndarray] = []
        self._content_ids: list[np.ndarray] = []
        self._per_image: dict[str, list[np.ndarray]] = {}

    def add(self, images: np.ndarray, class_ids: np.ndarray, content_ids: np.ndarray,
            per_image: dict[str, np.ndarray] | None = None) -> None:
        n = len(images)
        want = (n, self.img_size, self.img_size, self.channels)
        if images.dtype != np.uint8 or images.shape != want:
            raise ValueError(f"expected uint8 images of shape {want}, got {images.dtype} {images.shape}")
        self._f.write(np.ascontiguousarray(images).tobytes())
        self._class_ids.append(np.broadcast_to(np.asarray(class_ids, np.int64), (n,)))
        self._content_ids.append(np.broadcast_to(np.asarray(content_ids, np.int64), (n,)))
        for key, values in (per_image or {}).items():
            if key not in self._per_image:
                if self.n_imgs:
                    raise ValueError(f"per-image array {key!r} must be given from the first chunk on")
                self._per_image[key] = []
            self._per_image[key].append(np.broadcast_to(np.asarray(values, np.int64), (n,)))
        self.n_imgs += n

    def close(self, meta: DatasetMeta) -> None:
        """Patch the image count into the header and write labels and metadata."""
        self._f.seek(0)
        self._f.write(_npy_header((self.n_imgs, self.img_size, self.img_size, self.channels), np.uint8))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

        np.save(self.dir / "class_ids.npy", cat(self._class_ids))
        np.save(self.dir / "content_ids.npy", cat(self._content_ids))
        for key, parts in self._per_image.items():
            np.save(self.dir / f"{key}.npy", cat(parts))
        meta.n_imgs = self.n_imgs
        meta.img_size, meta.channels = self.img_size, self.channels
        meta.per_image = sorted(self._per_image)
        atomic_write_json(self.dir / "meta.json", meta.to_json())

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()


def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.exists():
        raise LordkitError(f"dataset file missing: {path}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LordkitError(f"dataset file {path} is unreadable or truncated: {e}") from None


def _read_meta_quietly(path: Path) -> Any:
    """A meta.json as JSON, or None if it is missing, not a regular file or not JSON."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Dataset:
    """A preprocessed dataset opened from its directory; images stay memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        recover_tree(self.path, depth=1)  # a replacement cut short by a crash is repaired before reading
        if not self.path.is_dir():
            raise LordkitError(f"dataset not found: {self.path} (run `lordkit preprocess` first)")
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise LordkitError(f"{self.path} is not a lordkit dataset: meta.json is missing")
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LordkitError(f"{meta_path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != STORE_FORMAT:
            raise LordkitError(f"{meta_path}: unknown dataset format {raw.get('format') if isinstance(raw, dict) else None!r}")
        self.meta = DatasetMeta.from_json(raw, meta_path)
        m = self.meta
        self.images = _load_array(self.path / "images.npy", mmap=True)
        want = (m.n_imgs, m.img_size, m.img_size, m.channels)
        if self.images.dtype != np.uint8 or self.images.shape != want:
            raise LordkitError(f"{self.path / 'images.npy'}: expected uint8 {want}, found "
                               f"{self.images.dtype} {self.images.shape}")
        self.class_ids = self._labels("class_ids")
        self.content_ids = self._labels("content_ids")
        if m.n_imgs and (self.class_ids.min() < 0 or self.class_ids.max() >= m.n_classes):
            raise LordkitError(f"{self.path / 'class_ids.npy'}: class ids outside 0..{m.n_classes - 1}")
        self.per_image = {key: self._labels(key) for key in m.per_image}
        self._check_split_sibling()

    def _check_split_sibling(self) -> None:
        """A split part and its sibling must come from one split: a pair mixed by hand (or by a
        replacement of an older release cut short) is one error, not a silent overlap of train and test."""
        split = self.meta.extra.get("split")
        if not isinstance(split, dict) or not split.get("id") or not isinstance(split.get("sibling"), str):
            return
        sibling = self.path.parent / split["sibling"]
        other = _read_meta_quietly(sibling / "meta.json")
        other_split = other.get("extra", {}).get("split") if isinstance(other, dict) else None
        if not isinstance(other_split, dict) or other_split.get("sibling") != self.path.name:
            return  # no sibling, or that name now holds another dataset: nothing to compare
        if other_split.get("id") != split["id"]:
            raise LordkitError(f"datasets {self.path.name} and {sibling.name} are parts of different splits "
                               f"(seeds {split.get('seed')} and {other_split.get('seed')}); run the split "
                               "again with --force")

    def _labels(self, key: str) -> np.ndarray:
        arr = _load_array(self.path / f"{key}.npy")
        if arr.dtype != np.int64 or arr.shape != (self.meta.n_imgs,):
            raise LordkitError(f"{self.path / (key + '.npy')}: expected int64 ({self.meta.n_imgs},), "
                               f"found {arr.dtype} {arr.shape}")
        return arr

    def __len__(self) -> int:
        return self.meta.n_imgs

    @property
    def n_classes(self) -> int:
        return self.meta.n_classes

    @property
    def has_content_labels(self) -> bool:
        return bool(len(self.content_ids)) and bool((self.content_ids >= 0).all())

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.class_ids, minlength=self.n_classes)


def parse_npy_shape(header: bytes) -> tuple[int, ...]:
    """Shape from a raw .npy header dict (used by tests to check the fixed-size header)."""
    return tuple(ast.literal_eval(header.decode("latin1"))["shape"])
