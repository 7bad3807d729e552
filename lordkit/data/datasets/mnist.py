"""MNIST from its IDX files (plain or .gz) or from keras' mnist.npz: class = digit, no content labels.

Train and test sets are concatenated, train first; meta.extra["split_sizes"] records how many
images each contributed, so the official split can be recovered from the store.
"""

from __future__ import annotations

import gzip
import threading
import zipfile
import zlib
from functools import partial
from pathlib import Path

import numpy as np

from lordkit.data.sources import Chunk, Loaded, Options, Source, register, sorted_class_map
from lordkit.errors import LordkitError

CHUNK_IMGS = 2048  # images per Chunk: small enough to parallelise, large enough to amortise overhead
N_DIGITS = 10
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # ndim -> magic of an unsigned-byte IDX file
SETS = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}
NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


class _IdxFile:
    """One unsigned-byte IDX file: header checked on open, data read per row range."""

    def __init__(self, path: Path, ndim: int):
        self.path = path
        self.gz = path.suffix == ".gz"
        self.offset = 4 + 4 * ndim  # magic + one int32 per dim
        self._lock = threading.Lock()
        self._data: np.ndarray | None = None  # whole decompressed payload, .gz only
        try:
            with (gzip.open(path, "rb") if self.gz else open(path, "rb")) as f:
                header = f.read(self.offset)
        except (OSError, EOFError, zlib.error) as e:
            raise LordkitError(f"{path}: cannot read ({e})") from None
        if len(header) < 4:
            raise LordkitError(f"{path}: file is empty or truncated (no IDX header)")
        magic = int.from_bytes(header[:4], "big")
        if magic != IDX_MAGIC[ndim]:
            raise LordkitError(f"{path}: not an MNIST IDX file (magic 0x{magic:08x}, expected "
                               f"0x{IDX_MAGIC[ndim]:08x} for {ndim}-D unsigned bytes)")
        if len(header) < self.offset:
            raise LordkitError(f"{path}: truncated IDX header")
        self.dims = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        if any(d < 1 for d in self.dims):
            raise LordkitError(f"{path}: invalid IDX dimensions {self.dims}")
        self.row_bytes = int(np.prod(self.dims[1:], dtype=np.int64))
        want = self.offset + self.dims[0] * self.row_bytes
        have = self._stored_size()
        if have != want and self.gz:
            raise LordkitError(f"{path}: file is truncated or corrupt (gzip trailer gives {have} bytes "
                               f"uncompressed, header dims {self.dims} need {want})")
        if have != want:
            what = "truncated" if have < want else "longer than its header says"
            raise LordkitError(f"{path}: file is {what} ({have} bytes, header dims {self.dims} need {want})")

    def _stored_size(self) -> int:
        size = self.path.stat().st_size
        if not self.gz:
            return size
        if size < 18:  # 10-byte gzip header + 8-byte trailer
            return -1
        # The gzip trailer holds the uncompressed size mod 2**32: a cheap truncation check.
        with open(self.path, "rb") as f:
            f.seek(-4, 2)
            return int.from_bytes(f.read(4), "little")

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a (stop - start, *dims[1:]) uint8 array."""
        count = (stop - start) * self.row_bytes
        if self.gz:
            data = self._decompressed()[self.offset + start * self.row_bytes:][:count]
        else:
            data = np.fromfile(self.path, np.uint8, count=count, offset=self.offset + start * self.row_bytes)
        if data.size != count:
            raise LordkitError(f"{self.path}: file is truncated (rows {start}:{stop} missing)")
        return data.reshape((stop - start, *self.dims[1:]))

    def _decompressed(self) -> np.ndarray:
        # A gzip stream cannot be sought cheaply: decompress once and share it between chunks.
        with self._lock:
            if self._data is None:
                try:
                    with gzip.open(self.path, "rb") as f:
                        self._data = np.frombuffer(f.read(), np.uint8)
                except (OSError, EOFError, zlib.error) as e:
                    raise LordkitError(f"{self.path}: corrupt gzip data ({e})") from None
            return self._data


def _find(folder: Path, stem: str) -> Path | None:
    """The IDX file for e.g. stem 'train-images' under its official or common alternative names."""
    kind = "idx3" if stem.endswith("images") else "idx1"
    for name in (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= N_DIGITS):
        raise LordkitError(f"{where}: labels must be digits 0..9, found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def _idx_chunks(images: _IdxFile, labels: np.ndarray) -> list[Chunk]:
    def load(start: int, stop: int) -> Loaded:
        return Loaded(images=images.rows(start, stop)[..., None], class_ids=labels[start:stop])  # (n, h, w, 1)

    n = images.dims[0]
    return [Chunk(f"{images.path.name}[{a}:{min(a + CHUNK_IMGS, n)}]", min(CHUNK_IMGS, n - a),
                  partial(load, a, min(a + CHUNK_IMGS, n))) for a in range(0, n, CHUNK_IMGS)]


def _open_idx(folder: Path) -> tuple[list[Chunk], dict[str, int]]:
    chunks: list[Chunk] = []
    sizes: dict[str, int] = {}
    for split, (img_stem, lbl_stem) in SETS.items():
        img_path, lbl_path = _find(folder, img_stem), _find(folder, lbl_stem)
        if img_path is None and lbl_path is None:
            continue
        if img_path is None or lbl_path is None:
            missing = f"{img_stem}-idx3-ubyte" if img_path is None else f"{lbl_stem}-idx1-ubyte"
            raise LordkitError(f"MNIST {split} set in {folder} is incomplete: {missing}[.gz] not found")
        images, label_file = _IdxFile(img_path, 3), _IdxFile(lbl_path, 1)
        if images.dims[0] != label_file.dims[0]:
            raise LordkitError(f"MNIST {split} set: {img_path.name} holds {images.dims[0]} images but "
                               f"{lbl_path.name} holds {label_file.dims[0]} labels")
        labels = _check_labels(label_file.rows(0, label_file.dims[0]), str(lbl_path))
        chunks += _idx_chunks(images, labels)
        sizes[split] = images.dims[0]
    return chunks, sizes


def _open_npz(path: Path) -> tuple[list[Chunk], dict[str, int]]:
    # keras' mnist.npz is ~11 MB compressed and cannot be sliced lazily: load and check it once.
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for keys in NPZ_KEYS.values() for k in keys if k not in npz.files]
            if missing:
                raise LordkitError(f"{path}: not a keras mnist.npz (missing {', '.join(missing)})")
            arrays = {k: npz[k] for keys in NPZ_KEYS.values() for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise LordkitError(f"{path}: unreadable or truncated .npz ({e})") from None
    chunks: list[Chunk] = []
    sizes: dict[str, int] = {}
    for split, (xk, yk) in NPZ_KEYS.items():
        x, y = arrays[xk], arrays[yk]
        if x.dtype != np.uint8 or x.ndim != 3:
            raise LordkitError(f"{path}: {xk} must be uint8 (N, H, W), found {x.dtype} {x.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise LordkitError(f"{path}: {yk} must be integer ({len(x)},) to match {xk}, found {y.dtype} {y.shape}")
        y = _check_labels(y, f"{path}:{yk}")
        for a in range(0, len(x), CHUNK_IMGS):
            b = min(a + CHUNK_IMGS, len(x))
            chunks.append(Chunk(f"{path.name}:{xk}[{a}:{b}]", b - a,
                                partial(Loaded, x[a:b, ..., None], y[a:b])))  # (n, h, w, 1)
        sizes[split] = len(x)
    return chunks, sizes


@register("mnist", "MNIST digits from the IDX files (plain or .gz) or keras mnist.npz (class = digit)")
def open_mnist(path: Path, opts: Options) -> Source:
    expected = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                "t10k-labels-idx1-ubyte (plain or .gz), or keras' mnist.npz")
    if path.is_file() and "-ubyte" in path.name:
        path = path.parent  # one of the IDX files: read the folder holding all four
    if path.is_file():
        if path.suffix != ".npz":
            raise LordkitError(f"{path}: --dataset-path must be the folder holding {expected}, or the .npz itself")
        chunks, sizes = _open_npz(path)
    elif path.is_dir():
        # torchvision downloads into <root>/MNIST/raw: accept its root too.
        folders = [path, path / "MNIST" / "raw"]
        chunks, sizes = [], {}
        for folder in folders:
            if folder.is_dir():
                chunks, sizes = _open_idx(folder)
                if chunks:
                    break
        if not chunks and (path / "mnist.npz").is_file():
            chunks, sizes = _open_npz(path / "mnist.npz")
        if not chunks:
            raise LordkitError(f"no MNIST files in {path}: expected {expected}")
    else:
        raise LordkitError(f"MNIST folder not found: {path}")
    names, _ = sorted_class_map(str(d) for d in range(N_DIGITS))  # "0".."9": id == digit
    return Source(class_names=names, channels=1, chunks=chunks, extra={"split_sizes": sizes})
