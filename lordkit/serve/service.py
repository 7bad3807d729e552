"""The model behind the HTTP routes: a runtime `Transfer` whose three networks run through one
`Batcher`, with image decoding, alignment and PNG encoding on a thread pool.

Everything a request computes goes through the same pieces as `lordkit.runtime.Transfer.transfer`:
the export's `Preparer` (decode, align or centre-square), uint8 -> float32 / 255 in NCHW, the
content and class encoders, class-bank rows for class ids and names, the generator on (content,
class) pairs, and `to_uint8_image` for the output. Only the grouping of rows into onnxruntime
calls differs, which does not change a row's result (tests/test_serve.py compares pixels).

Uploaded bytes are decoded by the runtime's `load_image`, which reads a path: they are handed to it
as an anonymous in-memory file (memfd, /proc/self/fd/N) on Linux, a temporary file elsewhere, and
the file's name in messages is replaced by the upload's (`content[0] (me.jpg)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lordkit.errors import BadInput, Hint, LordkitError, NoFace, TooLarge, UnknownClass, Unsupported
from lordkit.export_format import RUNTIME_NETWORKS
from lordkit.serve.batcher import Batcher, BatcherClosed
from lordkit.serve.metrics import Metrics
from lordkit.serve.settings import Settings

log = logging.getLogger("lordkit.serve")

CONTENT_ENCODER, CLASS_ENCODER, GENERATOR = RUNTIME_NETWORKS


class Problem(Exception):
    """A request the server refuses: an HTTP status and one line for {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split()) or "error"
        self.headers = headers or {}


# The status of each type of user error (the most specific type listed first wins), and how HTTP
# names the library's options and words its hints (lordkit.errors).
HTTP_STATUS: list[tuple[type[LordkitError], int]] = [
    (NoFace, 422), (UnknownClass, 422), (TooLarge, 413), (Unsupported, 400), (BadInput, 400), (LordkitError, 400)]
HTTP_OPTIONS = {"paste_back": "paste_back", "all_faces": "all_faces", "no_align": "align=false"}
HTTP_HINTS = {
    Hint.NO_ALIGN: "; send align=false for pre-aligned crops",
    Hint.GIVE_CONTENT: ": -F content=@photo.jpg",
    Hint.GIVE_CLASS: ": -F class=@ref.jpg, -F class_id=N or -F class_name=NAME",
}


def problem(error: LordkitError, rename: tuple[str, str] | None = None) -> Problem:
    """The HTTP answer to a user error, by its type; `rename` replaces a temporary path in its text."""
    status = next(code for kind, code in HTTP_STATUS if isinstance(error, kind))
    text = error.words(HTTP_HINTS, HTTP_OPTIONS)
    return Problem(status, text.replace(*rename) if rename else text)


@dataclass
class Upload:
    """One uploaded image file of a multipart form."""

    field: str  # the form field: "content" or "class"
    index: int  # its position among that field's files
    filename: str | None
    data: bytes

    @property
    def label(self) -> str:
        """Names results: the file's stem, else field + index (content0, class1)."""
        stem = Path(self.filename or "").stem
        return stem or f"{self.field}{self.index}"

    @property
    def name(self) -> str:
        """Names the file in messages: content[0] (me.jpg)."""
        return f"{self.field}[{self.index}]" + (f" ({self.filename})" if self.filename else "")


@dataclass
class PreparedInput:
    """An upload turned into model input."""

    label: str
    prepared: object  # lordkit.runtime.Prepared (kept for paste-back)
    x: np.ndarray  # (C, H, W) float32 in [0, 1], as Transfer feeds its encoders
    warnings: list[str]


@contextlib.contextmanager
def _as_path(data: bytes) -> Iterator[str]:
    """The bytes as a readable file path, in memory where the OS allows."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("lordkit-upload", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="lordkit-upload-", delete=False) as f:
        f.write(data)
    try:
        yield f.name
    finally:
        os.unlink(f.name)


class Service:
    """A loaded export and its batcher; the routes call the async methods."""

    def __init__(self, settings: Settings):
        from lordkit.runtime import Transfer

        self.settings = settings
        self._sink = threading.local()  # warnings of the request this thread is preparing
        self.transfer = Transfer(settings.export, backend=settings.backend, provider=settings.provider,
                                 threads=settings.onnx_threads, batch_size=settings.max_batch, precision=settings.precision, landmarks=settings.landmarks,
                                 detector=settings.detector, warn=self._warn)
        t = self.transfer
        if t.is_face:
            _ = t.preparer.aligner  # load dlib's models now, not in the first request (and not in two threads)
        self.metrics = Metrics(info={"model": t.bundle.model_name, "device": str(t.device),
                                     "img_size": str(t.img_size)})
        self.batcher = Batcher({n: t.models[n] for n in RUNTIME_NETWORKS}, settings.max_batch,
                               settings.max_wait_ms / 1000.0, on_batch=self.metrics.batch)
        self.executor = ThreadPoolExecutor(settings.prep_threads or os.cpu_count() or 1,
                                           thread_name_prefix="lordkit-prep")
        self.in_flight = 0  # requests admitted (changed on the event loop only)
        self.closing = False
        waiting = self.batcher.waiting_rows
        self.metrics.gauge("lordkit_queue_depth", "Requests admitted and not yet answered (limit: --queue).",
                           lambda: [((), self.in_flight)])
        self.metrics.gauge("lordkit_queue_limit", "Requests admitted at once at most (--queue).",
                           lambda: [((), settings.queue)])
        self.metrics.gauge("lordkit_queue_rows", "Rows waiting for an onnxruntime call, by network.",
                           lambda: [((("network", n),), v) for n, v in sorted(waiting().items())])

    # -- state ----------------------------------------------------------------------------------

    @property
    def bundle(self):
        return self.transfer.bundle

    @property
    def full(self) -> bool:
        return self.in_flight >= self.settings.queue

    def describe(self) -> dict:
        b, s = self.bundle, self.settings
        return {"model_name": b.model_name, "img_size": b.img_size, "channels": b.channels,
                "content_dim": b.content_dim, "class_dim": b.class_dim, "n_classes": b.n_classes,
                "face": b.is_face, "device": str(self.transfer.device), "max_batch": s.max_batch,
                "max_wait_ms": s.max_wait_ms, "max_pairs": s.max_pairs, "max_body_mb": s.max_body_mb,
                "max_image_mp": s.max_image_mp}

    def close(self) -> None:
        """Finish queued work, then stop the inference thread and the preparation threads."""
        self.closing = True
        if not self.batcher.close(timeout=self.settings.timeout_s + 5):
            log.warning("the inference thread did not finish within %.0f s", self.settings.timeout_s + 5)
        self.executor.shutdown(wait=True)

    # -- preparing inputs (preparation threads) -------------------------------------------------

    def _warn(self, message: str) -> None:
        sink = getattr(self._sink, "warnings", None)
        if sink is None:
            log.warning("%s", message)
        else:
            sink.append(message)

    def _prepare(self, upload: Upload, align: bool | None) -> PreparedInput:
        from lordkit.runtime.images import sniff, to_model_input

        if not upload.data:
            raise Problem(400, f"{upload.name} is empty, not an image")
        info = sniff(upload.data)
        limit = self.settings.max_pixels
        if info is not None and info.width * info.height > limit:
            raise Problem(413, f"{upload.name} is {info.width}x{info.height} px "
                               f"({info.width * info.height / 1e6:.0f} MP), above this server's "
                               f"{limit / 1e6:g} MP limit; shrink it first")
        self._sink.warnings = []
        try:
            with _as_path(upload.data) as path:
                try:
                    [prepared] = self.transfer.preparer(path, label=upload.label, align=align)
                except LordkitError as e:
                    raise problem(e, rename=(path, upload.name)) from None
                warnings = [w.replace(path, upload.name) for w in self._sink.warnings]
        finally:
            self._sink.warnings = None
        x = to_model_input(prepared.image, self.transfer.img_size, self.transfer.channels, upload.name)  # (C, H, W)
        prepared.source = None  # the temporary path means nothing after this
        return PreparedInput(label=upload.label, prepared=prepared, x=x, warnings=warnings)

    async def prepare(self, uploads: Sequence[Upload], align: bool | None = None) -> list[PreparedInput]:
        """Decode and prepare every upload, in parallel on the preparation threads."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*[loop.run_in_executor(self.executor, self._prepare, u, align)
                                           for u in uploads]))

    async def off_loop(self, fn, *args):
        """Run fn(*args) on a preparation thread (PNG and JSON encoding)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- codes and images (the inference thread) ------------------------------------------------

    async def _run(self, network: str, **inputs: np.ndarray) -> np.ndarray:
        try:
            future = self.batcher.submit(network, **inputs)
        except BatcherClosed:
            raise Problem(503, "the server is shutting down", {"Retry-After": "1"}) from None
        return await asyncio.wrap_future(future)

    async def content_codes(self, inputs: Sequence[PreparedInput]) -> np.ndarray:
        """(N, content_dim) float32."""
        return await self._run(CONTENT_ENCODER, image=np.stack([p.x for p in inputs]))

    async def class_codes(self, images: Sequence[PreparedInput], bank_ids: Sequence[int]) -> np.ndarray:
        """(len(images) + len(bank_ids), class_dim): encoded photos first, then class-bank rows."""
        bank = self.bundle.class_bank[list(bank_ids)] if bank_ids else np.empty((0, self.bundle.class_dim), np.float32)
        if not images:
            return np.asarray(bank, np.float32)
        encoded = await self._run(CLASS_ENCODER, image=np.stack([p.x for p in images]))
        return np.concatenate([encoded, bank]).astype(np.float32, copy=False)

    async def generate(self, content_codes: np.ndarray, class_codes: np.ndarray) -> np.ndarray:
        """(N * M, H, W, C) float32, in the job's pair order (lordkit.runtime.job)."""
        from lordkit.runtime.job import pair_codes

        cc, kc = pair_codes(content_codes, class_codes)
        out = await self._run(GENERATOR, content_code=cc, class_code=kc)
        return out.transpose(0, 2, 3, 1)

    # -- class references -----------------------------------------------------------------------

    def bank_ids(self, job) -> list[int]:
        """Class-bank rows of a job's class ids and names (ids first): 422 for an unknown one."""
        try:
            return job.bank_rows(self.bundle)
        except LordkitError as e:
            raise problem(e) from None


def parse_class_ids(texts: Sequence[str]) -> list[int]:
    """The form's class_id values as integers (400 for anything else)."""
    ids = []
    for text in texts:
        try:
            ids.append(int(text.strip()))
        except ValueError:
            raise Problem(400, f"class_id must be an integer, got {text!r}") from None
    return ids


def encode_png(img: np.ndarray) -> bytes:
    """An RGB (or grey) uint8 or [0, 1] float image as PNG bytes, RGB like `lordkit transfer` writes."""
    import cv2

    from lordkit.viz import to_rgb_uint8

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(to_rgb_uint8(img)[..., ::-1]),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


__all__ = ["Service", "Problem", "Upload", "PreparedInput", "encode_png", "problem", "parse_class_ids",
           "HTTP_STATUS", "HTTP_HINTS", "HTTP_OPTIONS"]
