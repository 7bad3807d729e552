"""Dynamic batching: rows of many requests share one onnxruntime call per network.

A request submits a *job* to a network: a few rows (images for an encoder, (content, class) pairs
for the generator) as arrays with a leading row axis. One inference thread serves every network:
it takes the network whose oldest waiting row is oldest, waits until `max_batch` rows are waiting
or `max_wait_s` has passed since that row arrived, concatenates up to `max_batch` rows (from one
job or several; a job bigger than that is split over several calls) and runs the network once.
Each job's rows come back in order through a `concurrent.futures.Future`.

One thread, not one per network: on a CPU onnxruntime already spreads one call over the cores,
and concurrent calls would only compete for them. onnxruntime releases the GIL while it runs, so
the event loop keeps accepting and decoding meanwhile.

A job whose future was cancelled before its first row was taken (its request timed out) is
dropped; `close()` finishes every job already submitted before the thread ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

log = logging.getLogger("lordkit.serve")

Model = Callable[..., np.ndarray]  # named (B, ...) float32 inputs -> (B, ...) output (an OrtModel)


class BatcherClosed(RuntimeError):
    """Work submitted after close()."""


@dataclass(eq=False)
class _Job:
    inputs: dict[str, np.ndarray]  # name -> (n, ...) array
    n_rows: int
    future: Future
    arrived: float  # time.monotonic() at submission
    taken: int = 0  # rows handed to a batch so far
    done: int = 0  # rows whose results are in `out`
    out: np.ndarray | None = None
    failed: bool = False


@dataclass
class _Piece:
    job: _Job
    start: int
    stop: int


@dataclass
class BatchStats:
    """Running totals, per network (read by tests and the benchmark)."""

    calls: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    max_rows: dict[str, int] = field(default_factory=dict)


class Batcher:
    """Batch the rows of concurrent jobs per network; see the module docstring.

    models: network name -> callable taking the network's named inputs (an OrtModel).
    max_batch: rows per call at most. max_wait_s: how long the first waiting row waits for company.
    on_batch: called with (network, rows, seconds) after every call (metrics).
    """

    def __init__(self, models: Mapping[str, Model], max_batch: int = 32, max_wait_s: float = 0.005,
                 on_batch: Callable[[str, int, float], None] | None = None, name: str = "lordkit-inference"):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.models = dict(models)
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queues: dict[str, deque[_Job]] = {name: deque() for name in self.models}
        self._waiting: dict[str, int] = {name: 0 for name in self.models}  # rows not yet taken
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- submitting -----------------------------------------------------------------------------

    def submit(self, network: str, **inputs: np.ndarray) -> Future:
        """Queue `inputs` (each (n, ...) with the same n >= 1) for `network`; the future gets (n, ...)."""
        if network not in self.models:
            raise KeyError(f"no network {network!r}; have {sorted(self.models)}")
        sizes = {len(a) for a in inputs.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"{network}: inputs must share one row count >= 1, got {sorted(sizes)}")
        job = _Job(inputs=inputs, n_rows=sizes.pop(), future=Future(), arrived=time.monotonic())
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            self._queues[network].append(job)
            self._waiting[network] += job.n_rows
            self._cond.notify()
        return job.future

    def waiting_rows(self) -> dict[str, int]:
        """Rows queued per network and not yet in a call."""
        with self._cond:
            return dict(self._waiting)

    def close(self, timeout: float | None = None) -> bool:
        """Finish the jobs already queued, then end the thread; False if it had not ended by `timeout`."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the inference thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not any(self._waiting.values()):
                    if self._closing:
                        return
                    self._cond.wait()
                # The network whose oldest waiting row is oldest goes next.
                network = min((q[0].arrived, name) for name, q in self._queues.items() if q)[1]
                deadline = self._queues[network][0].arrived + self.max_wait_s
                while self._waiting[network] < self.max_batch and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                pieces = self._take(network)
            if pieces:
                self._run(network, pieces)

    def _take(self, network: str) -> list[_Piece]:
        """Up to max_batch rows from the front of the network's queue (called under the lock)."""
        queue, pieces, room = self._queues[network], [], self.max_batch
        while queue and room:
            job = queue[0]
            if job.taken == 0 and not job.future.set_running_or_notify_cancel():  # cancelled while queued
                queue.popleft()
                self._waiting[network] -= job.n_rows
                continue
            if job.failed:  # an earlier piece failed: its other rows are not run
                queue.popleft()
                self._waiting[network] -= job.n_rows - job.taken
                continue
            k = min(room, job.n_rows - job.taken)
            pieces.append(_Piece(job, job.taken, job.taken + k))
            job.taken += k
            room -= k
            self._waiting[network] -= k
            if job.taken == job.n_rows:
                queue.popleft()
        return pieces

    def _run(self, network: str, pieces: list[_Piece]) -> None:
        names = list(pieces[0].job.inputs)
        if len(pieces) == 1:
            p = pieces[0]
            batch = {n: p.job.inputs[n][p.start:p.stop] for n in names}
        else:
            batch = {n: np.concatenate([p.job.inputs[n][p.start:p.stop] for p in pieces]) for n in names}
        rows = sum(p.stop - p.start for p in pieces)
        t0 = time.perf_counter()
        try:
            out = self.models[network](**batch)
            if len(out) != rows:
                raise RuntimeError(f"{network} returned {len(out)} rows for {rows}")
        except Exception as e:  # the requests get the error; the thread keeps serving
            log.exception("%s failed on a batch of %d rows", network, rows)
            for p in pieces:
                if not p.job.failed:
                    p.job.failed = True
                    p.job.future.set_exception(e)
            return
        seconds = time.perf_counter() - t0
        self.stats.calls[network] = self.stats.calls.get(network, 0) + 1
        self.stats.rows[network] = self.stats.rows.get(network, 0) + rows
        self.stats.max_rows[network] = max(self.stats.max_rows.get(network, 0), rows)
        if self.on_batch is not None:
            self.on_batch(network, rows, seconds)
        at = 0
        for p in pieces:
            job, k = p.job, p.stop - p.start
            if job.failed:
                at += k
                continue
            if job.out is None:
                job.out = np.empty((job.n_rows, *out.shape[1:]), out.dtype)
            job.out[p.start:p.stop] = out[at:at + k]
            at += k
            job.done += k
            if job.done == job.n_rows:
                job.future.set_result(job.out)


__all__ = ["Batcher", "BatcherClosed", "BatchStats"]
