"""The server's settings: one typed dataclass, checked before anything slow starts, passed to worker
processes as JSON in an environment variable."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from lordkit.errors import LordkitError
from lordkit.runtime.backends import BACKENDS, PRECISIONS

ENV_SETTINGS = "LORDKIT_SERVE_SETTINGS"  # worker processes read their settings from here
MAX_IMAGE_MP = 100.0  # the runtime refuses images above 100 MP whatever the server allows


def _one_of(names) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class Settings:
    export: str  # the export dir (resolved: a path, not a name)
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # rows per onnxruntime call at most, per network
    max_wait_ms: float = 5.0  # how long the first queued row waits for others to share its call
    workers: int = 1  # uvicorn worker processes, each with its own model
    backend: str = "onnxruntime"  # onnxruntime, openvino or torch (lordkit.runtime.backends)
    provider: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int | None = None  # onnxruntime intra-op threads per process (None: cores / workers)
    precision: str = "fp32"  # which ONNX files run: fp32, fp16 or int8
    queue: int = 128  # requests admitted at once (receiving, waiting or running); more get 503
    timeout_s: float = 30.0  # per request, from arrival to response; then 504
    max_body_mb: float = 16.0  # request bodies above this get 413
    max_image_mp: float = MAX_IMAGE_MP  # images above this many megapixels get 413
    max_pairs: int = 256  # (content, class) pairs per transfer request; more get 413
    max_connections: int = 512  # open connections per process; a request on one past it gets 503
    header_timeout_s: float = 10.0  # a request line and headers must arrive within this; then 408, closed
    prep_threads: int | None = None  # threads decoding, aligning and encoding images (None: one per core)
    landmarks: str = "68"  # face models: 68, 5, or a dlib shape predictor .dat file
    detector: str = "hog"  # face models: hog or cnn
    access_log: bool = True  # one log line per request (uvicorn's access log)

    def check(self) -> "Settings":
        """LordkitError naming the command-line option for the first bad value."""
        def need(ok: bool, flag: str, what: str, value) -> None:
            if not ok:
                raise LordkitError(f"{flag} must be {what}, got {value}")

        need(1 <= self.port <= 65535, "--port", "from 1 to 65535", self.port)
        need(self.max_batch >= 1, "--max-batch", ">= 1", self.max_batch)
        need(0 <= self.max_wait_ms <= 10_000, "--max-wait-ms", "from 0 to 10000", self.max_wait_ms)
        need(self.workers >= 1, "--workers", ">= 1", self.workers)
        need(self.threads is None or self.threads >= 1, "--threads", ">= 1", self.threads)
        need(self.backend in BACKENDS, "--backend", _one_of(BACKENDS), repr(self.backend))
        with_backend = "" if self.backend == BACKENDS[0] else f" with --backend {self.backend}"
        need(self.precision in PRECISIONS[self.backend], "--precision", _one_of(PRECISIONS[self.backend]) + with_backend,
             repr(self.precision))
        need(self.queue >= 1, "--queue", ">= 1", self.queue)
        need(self.timeout_s > 0, "--timeout-s", "> 0", self.timeout_s)
        need(self.max_body_mb > 0, "--max-body-mb", "> 0", self.max_body_mb)
        need(0 < self.max_image_mp <= MAX_IMAGE_MP, "--max-image-mp", f"above 0 and at most {MAX_IMAGE_MP:g}",
             self.max_image_mp)
        need(self.max_pairs >= 1, "--max-pairs", ">= 1", self.max_pairs)
        need(self.max_connections >= 1, "--max-connections", ">= 1", self.max_connections)
        need(0 < self.header_timeout_s <= 3600, "--header-timeout-s", "above 0 and at most 3600",
             self.header_timeout_s)
        need(self.prep_threads is None or self.prep_threads >= 1, "--prep-threads", ">= 1", self.prep_threads)
        need(bool(self.host.strip()), "--host", "a host name or address", repr(self.host))
        return self

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_image_mp * 1_000_000)

    @property
    def onnx_threads(self) -> int | None:
        """--threads, or with several workers the cores shared out between them."""
        if self.threads is not None or self.workers == 1:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "Settings":
        text = os.environ.get(ENV_SETTINGS)
        if not text:
            raise LordkitError(f"{ENV_SETTINGS} is not set: start worker processes with `lordkit serve`")
        obj = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known}).check()


__all__ = ["Settings", "ENV_SETTINGS", "MAX_IMAGE_MP"]
