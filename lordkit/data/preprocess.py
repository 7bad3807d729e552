"""Run a reader's chunks in parallel, normalise every image, and stream them into a new store."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lordkit.console import make_progress
from lordkit.data.sources import DecodeError, Loaded, Options, Source, get_reader
from lordkit.data.store import Dataset, DatasetMeta, StoreWriter
from lordkit.errors import LordkitError
from lordkit.fsutil import atomic_write_json, staged_dir
from lordkit.imaging import square_resize

MAX_FAILED_FRACTION = 0.01  # more undecodable images than this fails the run


def normalise_image(img: np.ndarray, img_size: int, channels: int, square: str = "center") -> np.ndarray:
    """Any uint8 grey/RGB/RGBA image -> (img_size, img_size, channels) uint8 (alpha is dropped)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DecodeError(f"expected uint8 pixels, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or min(img.shape[:2]) < 1:
        raise DecodeError(f"unsupported image shape {img.shape}")
    return square_resize(img, img_size, channels, square)


@dataclass
class PreprocessSummary:
    path: Path
    n_imgs: int
    n_classes: int
    n_failed: int  # images that did not decode and were skipped
    failed_names: list[str]


class _Cancelling:
    """Shut a pool down dropping queued chunks, so a failed run does not decode what it throws away."""

    def __init__(self, pool: ThreadPoolExecutor):
        self.pool = pool

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _bar_vanishes_on_error(progress):
    """A failed run leaves its one error line on stderr, not a half-drawn bar above it."""
    try:
        yield
    except BaseException:
        progress.live.transient = True
        raise


def _run_chunk(chunk, img_size: int, source: Source):
    try:
        out: Loaded = chunk.load()
        imgs = out.images
        if isinstance(imgs, np.ndarray) and imgs.ndim == 4:
            seq = list(imgs)
        elif isinstance(imgs, np.ndarray):
            seq = [imgs]
        else:
            seq = list(imgs)
        if not seq:
            return None, chunk
        batch = np.stack([normalise_image(im, img_size, source.channels, source.square) for im in seq])
        return (batch, out), chunk
    except DecodeError as e:
        return e, chunk
    except cv2.error as e:  # OpenCV raises its own type for corrupt buffers
        return DecodeError(str(e).strip().splitlines()[-1]), chunk


def preprocess(dataset_id: str, dataset_path: str | os.PathLike | None, out_dir: Path, img_size: int = 64,
               opts: Options | None = None, force: bool = False, workers: int | None = None,
               show_progress: bool = True) -> PreprocessSummary:
    """Read `dataset_id` from its official files at `dataset_path` into a store at `out_dir`."""
    if img_size < 8 or img_size > 1024:
        raise LordkitError(f"--img-size {img_size} is out of range (8..1024)")
    spec = get_reader(dataset_id)
    opts = opts or Options()
    path: Path | None = None
    if spec.needs_path:
        if dataset_path is None:
            raise LordkitError(f"dataset {dataset_id} needs --dataset-path pointing at its official files")
        path = Path(dataset_path).expanduser()
        if not path.exists():
            raise LordkitError(f"dataset path not found: {path}")
    if Path(out_dir).exists() and not force:
        raise LordkitError(f"dataset {out_dir} already exists; pass --force to replace it")
    source = spec.open(path, opts)
    opts.check_all_used(dataset_id)
    if not source.chunks:
        raise LordkitError(f"no images found for {dataset_id} in {path}")
    n_expected = sum(c.n_expected for c in source.chunks)
    workers = workers or min(8, os.cpu_count() or 1)

    with staged_dir(out_dir, force=force, what="dataset") as tmp:
        writer = StoreWriter(tmp, img_size, source.channels)
        failed: list[str] = []
        n_failed = 0
        infos: list[Any] = []
        try:
            pool = ThreadPoolExecutor(max_workers=workers)
            with contextlib.closing(_Cancelling(pool)), make_progress() as progress, _bar_vanishes_on_error(progress):
                task = progress.add_task(f"preprocess {dataset_id}", total=n_expected, unit="img",
                                         visible=show_progress)
                pending: deque = deque()
                chunks = iter(source.chunks)
                exhausted = False
                while pending or not exhausted:
                    # Keep a bounded number of chunks in flight; write results in order.
                    while not exhausted and len(pending) < 4 * workers:
                        chunk = next(chunks, None)
                        if chunk is None:
                            exhausted = True
                        else:
                            pending.append(pool.submit(_run_chunk, chunk, img_size, source))
                    if not pending:
                        break
                    result, chunk = pending.popleft().result()
                    if isinstance(result, DecodeError):
                        n_failed += max(1, chunk.n_expected)
                        failed.append(f"{chunk.name}: {result}")
                        if n_failed > MAX_FAILED_FRACTION * n_expected and n_failed > 1:
                            raise LordkitError(
                                f"{n_failed} of {n_expected} images failed to decode (more than "
                                f"{MAX_FAILED_FRACTION:.0%}); first: {failed[0]}")
                    elif result is not None:
                        batch, out = result
                        writer.add(batch, out.class_ids, out.content_ids, out.per_image)
                        if out.info is not None:
                            infos.append(out.info)
                    progress.advance(task, chunk.n_expected)
            if writer.n_imgs == 0:
                raise LordkitError(f"no image of {dataset_id} in {path} could be decoded"
                                   + (f"; first error: {failed[0]}" if failed else ""))
            extra = dict(source.extra)
            meta = DatasetMeta(
                dataset_id=dataset_id, class_names=list(source.class_names), img_size=img_size,
                channels=source.channels, n_imgs=writer.n_imgs, content_factors=list(source.content_factors),
                source_path=str(path.resolve()) if path else None, face_template=source.face_template,
                extra=extra,
            )
            if source.finalize is not None:
                for key, value in source.finalize(infos).items():
                    setattr(meta, key, value) if hasattr(meta, key) else extra.__setitem__(key, value)
            if n_failed:
                extra["n_failed"] = n_failed
                extra["failed"] = failed[:100]
            writer.close(meta)
        except BaseException:
            writer.abort()
            raise
        ds = Dataset(tmp)
        empty = np.flatnonzero(ds.class_counts() == 0)
        if len(empty) and not n_failed:
            raise LordkitError(f"{len(empty)} class(es) have no images, e.g. {source.class_names[empty[0]]!r}")
        if len(empty):
            # Every image of these classes failed to decode: drop them, keeping sorted-name numbering.
            _drop_classes(tmp, ds, empty)
        n_classes = len(source.class_names) - len(empty)
    return PreprocessSummary(path=Path(out_dir), n_imgs=writer.n_imgs, n_classes=n_classes,
                             n_failed=n_failed, failed_names=failed)


def _drop_classes(directory: Path, ds: Dataset, empty: np.ndarray) -> None:
    keep = np.setdiff1d(np.arange(ds.n_classes), empty)
    new_id = np.full(ds.n_classes, -1, np.int64)
    new_id[keep] = np.arange(len(keep))
    np.save(directory / "class_ids.npy", new_id[ds.class_ids])
    meta = ds.meta
    meta.extra["dropped_classes"] = [meta.class_names[i] for i in empty]
    meta.class_names = [meta.class_names[i] for i in keep]
    atomic_write_json(directory / "meta.json", meta.to_json())
