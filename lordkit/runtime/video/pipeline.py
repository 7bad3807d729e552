"""Transfer on a video: decode -> align -> batch + generate -> paste / resize -> encode, overlapped.

Four stages run at once, joined by bounded queues (QUEUE_BATCHES batches of frames each), so memory
does not grow with the video's length:
- decode thread: the reader (PyAV or OpenCV) yields upright RGB frames and the source's audio packets;
- align thread: face models follow the faces (lordkit.runtime.video.tracking) and cut the aligned
  crops; other models take the frame's centre square at the model's size (as photos do);
- the calling thread batches crops (`batch_size` per onnxruntime call), runs the content encoder and
  the generator for every (crop, class) pair; onnxruntime releases the GIL while it computes;
- encode thread: faces are pasted back into the full frame (only the face's region is touched),
  other results resized to the output size; each class's frame is encoded with the source's
  timestamp, and the audio is carried along in stream order.
Whatever stops the run (the end, a broken source, an error, Ctrl-C or SIGTERM), the encode thread
finalises every container in a `finally`, so what was written plays.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from lordkit.errors import Hint, Interrupted, LordkitError, NoFace
from lordkit.runtime.job import by_class
from lordkit.runtime.video.sources import Audio, Frame, Pump, VideoInput, open_reader
from lordkit.runtime.video.tracking import BETA, D_CUTOFF_HZ, DETECT_EVERY, MIN_CUTOFF_HZ, FaceTracker
from lordkit.runtime.video.writers import open_writer

QUEUE_BATCHES = 2  # each queue holds this many batches of frames
_END = object()  # end of the stream, passed down the queues
_POLL_S = 0.1  # how often a blocked stage looks whether the run was stopped


@dataclass
class VideoResult:
    """What a video transfer did."""

    outputs: list[Path]
    n_frames: int  # frames written to each output
    n_no_face: int  # face models: frames without a face, written unchanged
    n_frames_expected: int | None  # from the source's header
    rate: Fraction
    backend: str  # "pyav" or "opencv"
    encoder: str
    audio: str | None  # "copy", "aac" or None
    broken: str | None = None  # why the source stopped early, if it did
    interrupted: bool = False
    n_detections: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # busy time per stage

    @property
    def frames_per_s(self) -> float:
        return self.n_frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Aligned:
    frame: Frame
    crops: list[np.ndarray]  # (S, S, C) uint8 model inputs: one per face, or the centre square
    matrices: list[np.ndarray]  # (2, 3) per face; [] for non-face models


@dataclass
class _Generated:
    frame: Frame
    matrices: list[np.ndarray]
    results: list[list[np.ndarray]]  # [class][face] uint8 (S, S[, C]) generated crops


class _Stopped(Exception):
    """A stage noticed that the run was stopped."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped()
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stopped()
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue


def paste_region(image: np.ndarray, crop: np.ndarray, m: np.ndarray) -> np.ndarray:
    """lordkit.faces.paste_back on the part of `image` the crop can touch (same pixels, much less work
    on big frames); `image` is modified in place and returned."""
    from lordkit.faces import invert_transform, paste_back

    s = crop.shape[0]
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(m)[:, :2]))))
    feather = s / 16 / scale
    corners = np.array([[-0.5, -0.5], [s - 0.5, -0.5], [-0.5, s - 0.5], [s - 0.5, s - 0.5]])
    inv = invert_transform(m)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    margin = int(np.ceil(2 * feather)) + 4  # the feather's blur reaches about 2 radii
    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(pts[:, 0].min())) - margin), max(0, int(np.floor(pts[:, 1].min())) - margin)
    x1, y1 = min(w, int(np.ceil(pts[:, 0].max())) + margin + 1), min(h, int(np.ceil(pts[:, 1].max())) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        return image
    shifted = np.asarray(m, np.float64).copy()
    shifted[:, 2] += shifted[:, :2] @ [x0, y0]  # region pixel (u, v) is image pixel (u + x0, v + y0)
    image[y0:y1, x0:x1] = paste_back(image[y0:y1, x0:x1], crop, shifted, feather)
    return image


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    return img


STAGES = ("decode", "align", "generate", "encode")


@dataclass
class StageStats:
    """What the stages of one run did, updated as they go (each counter by one stage only)."""

    busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # busy time per stage
    n_written: int = 0  # frames written to every output (encode)
    n_no_face: int = 0  # face models: frames without a face (generate)
    n_with_face: int = 0  # face models: frames with one (generate)


def transfer_video(t, source: VideoInput, class_codes: np.ndarray, outputs: list[Path], **options: Any) -> VideoResult:
    """Draw the video `source` in each class of `class_codes` (M, class_dim), one output file per class.

    t: an open lordkit.runtime.Transfer. Face models (aligning) paste the generated face back into
    each full frame; other models write the model's result, resized to out_size when given. The
    options are VideoRun's. A source that breaks off mid-way ends the run normally with `broken` set;
    the outputs then hold every frame read before it. Raises LordkitError for unreadable inputs
    (nothing is written), NoFace when a face model finds no face in any frame (the outputs are
    removed), and lordkit.errors.Interrupted (its `partial` the VideoResult of what was kept) on
    Ctrl-C or SIGTERM.
    """
    return VideoRun(t, source, class_codes, outputs, **options).run()


class VideoRun:
    """One video drawn in M classes: the stages below run on their own threads, joined by bounded
    queues; `run` starts them, runs the generate stage on the calling thread and keeps or removes the
    outputs.

    out_size: non-face models: the output side (None: the model's size).
    detect_every, all_faces, smooth, min_cutoff_hz, beta, d_cutoff_hz: face tracking (FaceTracker).
    backend: "auto", "pyav" or "opencv"; audio: carry the source's audio.
    progress: a rich Progress (lordkit.console.make_progress) to advance, or None.
    max_frames: stop after this many frames (None: the whole video).
    on_frame: called from the encode thread with (frame index, the faces' smoothed transforms).
    """

    def __init__(self, t, source: VideoInput, class_codes: np.ndarray, outputs: list[Path], *,
                 out_size: int | None = None, detect_every: int = DETECT_EVERY, all_faces: bool = False,
                 smooth: bool = True, min_cutoff_hz: float = MIN_CUTOFF_HZ, beta: float = BETA,
                 d_cutoff_hz: float = D_CUTOFF_HZ, backend: str = "auto", audio: bool = True,
                 progress: Any = None, max_frames: int | None = None,
                 on_frame: Callable[[int, list[np.ndarray]], None] | None = None):
        self.class_codes = np.asarray(class_codes, np.float32)
        if len(self.class_codes) != len(outputs) or len(outputs) == 0:
            raise ValueError(f"{len(self.class_codes)} classes for {len(outputs)} outputs")
        self.t, self.source, self.outputs = t, source, list(outputs)
        self.faces = bool(t.preparer.align)
        self.max_frames, self.on_frame, self.progress = max_frames, on_frame, progress
        self.tracker = (FaceTracker(t.preparer, detect_every=detect_every, all_faces=all_faces, smooth=smooth,
                                    min_cutoff_hz=min_cutoff_hz, beta=beta, d_cutoff_hz=d_cutoff_hz)
                        if self.faces else None)
        self.stats = StageStats()
        self.stop = threading.Event()
        self.reader = open_reader(source, backend=backend, audio=audio)
        info = self.reader.info
        if self.faces:
            self.width, self.height = info.width, info.height
        else:
            self.width = self.height = int(out_size or t.img_size)
        self.writers = self._open_writers(audio)
        cap = max(1, QUEUE_BATCHES * t.batch_size)
        self.q_decoded: queue.Queue = queue.Queue(cap)
        self.q_aligned: queue.Queue = queue.Queue(cap)
        self.q_generated: queue.Queue = queue.Queue(cap)
        self.close_errors: list[BaseException] = []  # writers that failed to finalise (encode thread)
        self.task = None

    def _open_writers(self, audio: bool) -> list:
        info = self.reader.info
        writers: list = []
        try:
            for path in self.outputs:
                writers.append(open_writer(self.reader.backend, path, self.width, self.height, info.rate,
                                           info.time_base, info.audio if audio else None))
        except BaseException:
            for w in writers:
                w.close()
                w.staged.discard()
            self.reader.close()
            raise
        return writers

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> VideoResult:
        """Run every stage to the end; keep the outputs (finalised) or remove them (see transfer_video)."""
        info = self.reader.info
        if self.progress is not None:
            total = info.n_frames if self.max_frames is None else min(self.max_frames, info.n_frames or self.max_frames)
            self.task = self.progress.add_task("video", total=total, unit="frame")
        threads = [Pump("lordkit-decode", self.decode, self.stop), Pump("lordkit-align", self.align, self.stop),
                   Pump("lordkit-encode", self.encode, self.stop)]
        start = time.perf_counter()
        interrupt: KeyboardInterrupt | None = None
        ok = kept = False
        try:
            for th in threads:
                th.start()
            self.generate(threads)
            threads[2].join()
            for th in threads:
                if th.error is not None:
                    raise th.error
            if self.close_errors:
                raise self.close_errors[0]
            ok = True
        except KeyboardInterrupt as e:
            interrupt = e
        finally:  # also when a stage failed: its error goes on after the outputs are removed
            if not ok:
                self.stop.set()
            for th in threads:
                th.join(timeout=60)
            self.reader.close()
            failed = bool(self.close_errors) or any(th.error is not None for th in threads)  # a file not whole
            kept = (self.stats.n_written > 0 and not failed
                    and (interrupt is not None or (ok and not self._no_face_anywhere())))
            for w in self.writers:
                w.staged.commit() if kept else w.staged.discard()
        result = self._result(time.perf_counter() - start, kept=kept, interrupted=interrupt is not None)
        if interrupt is not None:
            raise Interrupted(result, interrupt) from interrupt
        if self._no_face_anywhere():
            raise NoFace(f"no face found in any of the {self.stats.n_written} frames of {self.source.text}",
                         hint=Hint.NO_ALIGN)
        return result

    def _no_face_anywhere(self) -> bool:
        """A face model wrote frames, and none had a face: the outputs would be the source unchanged."""
        return self.faces and self.stats.n_written > 0 and self.stats.n_with_face == 0

    def _result(self, seconds: float, *, kept: bool, interrupted: bool) -> VideoResult:
        info = self.reader.info
        return VideoResult(outputs=self.outputs if kept else [], n_frames=self.stats.n_written if kept else 0,
                           n_no_face=self.stats.n_no_face, n_frames_expected=info.n_frames, rate=info.rate,
                           backend=self.reader.backend, encoder=getattr(self.writers[0], "encoder", "?"),
                           audio=self.writers[0].audio_mode, broken=self.reader.broken, interrupted=interrupted,
                           n_detections=self.tracker.n_detections if self.tracker is not None else 0,
                           seconds=seconds, stage_seconds={k: round(v, 3) for k, v in self.stats.busy_s.items()})

    # -- the stages ------------------------------------------------------------------------------

    def decode(self) -> None:
        """Decode thread: frames and audio packets from the reader, in stream order."""
        try:
            clock = time.perf_counter()
            n = 0
            for item in self.reader:
                self.stats.busy_s["decode"] += time.perf_counter() - clock
                if isinstance(item, Frame):
                    if self.max_frames is not None and n >= self.max_frames:
                        break
                    n += 1
                _put(self.q_decoded, item, self.stop)
                clock = time.perf_counter()
            _put(self.q_decoded, _END, self.stop)
        except _Stopped:
            pass

    def align(self) -> None:
        """Align thread: each frame's aligned face crops (tracked), or its centre square."""
        try:
            while True:
                item = _get(self.q_decoded, self.stop)
                if not isinstance(item, Frame):
                    _put(self.q_aligned, item, self.stop)
                    if item is _END:
                        return
                    continue
                clock = time.perf_counter()
                aligned = self._crops(item)
                self.stats.busy_s["align"] += time.perf_counter() - clock
                _put(self.q_aligned, aligned, self.stop)
        except _Stopped:
            pass

    def _crops(self, frame: Frame) -> _Aligned:
        from lordkit.faces import warp_face
        from lordkit.imaging import square_resize

        size, channels = self.t.img_size, self.t.channels
        if not self.faces:
            return _Aligned(frame, [square_resize(frame.image, size, channels)], [])
        matrices = [f.matrix for f in self.tracker(frame.image, frame.time_s)]
        crops = []
        for mat in matrices:
            crop = warp_face(frame.image, mat, size)
            if channels == 1:
                crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
            crops.append(crop.reshape(size, size, channels))
        return _Aligned(frame, crops, matrices)

    def generate(self, threads: list[Pump]) -> None:
        """The calling thread's stage: gather crops into batches, encode contents, generate every pair."""
        pending: list[Any] = []  # frames (with their crops) and audio, in stream order
        n_crops = 0
        try:
            while True:
                try:
                    item = self.q_aligned.get(timeout=_POLL_S)
                except queue.Empty:
                    if self.stop.is_set() or (not threads[1].is_alive() and self.q_aligned.empty()):
                        raise _Stopped() from None
                    continue
                if item is _END:
                    self._flush(pending)
                    _put(self.q_generated, _END, self.stop)
                    return
                pending.append(item)
                if isinstance(item, _Aligned):
                    n_crops += len(item.crops)
                if n_crops >= self.t.batch_size:
                    self._flush(pending)
                    pending, n_crops = [], 0
        except _Stopped:
            for th in threads:
                if th.error is not None:
                    raise th.error from None
            raise LordkitError("video transfer stopped: a stage ended without a result") from None

    def _flush(self, pending: list[Any]) -> None:
        """Generate every (crop, class) pair of the pending frames and pass them on in stream order."""
        from lordkit.runtime.images import to_uint8_image

        m = len(self.class_codes)
        crops = [c for item in pending if isinstance(item, _Aligned) for c in item.crops]
        clock = time.perf_counter()
        flat: list[np.ndarray] = []
        if crops:
            cc = self.t.content_codes(crops)
            for _, _, imgs in self.t.generate_iter(cc, self.class_codes):  # the job's pair order
                flat += [to_uint8_image(img) for img in imgs]
        self.stats.busy_s["generate"] += time.perf_counter() - clock
        k = 0
        for item in pending:
            if isinstance(item, _Aligned):
                n = len(item.crops)
                results = by_class(flat, k, n, m)
                k += n
                if item.matrices or not item.crops:
                    if item.crops:
                        self.stats.n_with_face += 1
                    else:
                        self.stats.n_no_face += 1
                _put(self.q_generated, _Generated(item.frame, item.matrices, results), self.stop)
            else:
                _put(self.q_generated, item, self.stop)

    def encode(self) -> None:
        """Encode thread: paste or resize each class's result, write it with the source's timestamp,
        carry the audio; every writer is finalised whatever happened, so what was written plays."""
        try:
            while True:
                item = _get(self.q_generated, self.stop)
                if item is _END:
                    return
                clock = time.perf_counter()
                if isinstance(item, Audio):
                    _write_audio(self.writers, item.item, self.writers[0].audio_mode)
                else:
                    self._write_frame(item)
                self.stats.busy_s["encode"] += time.perf_counter() - clock
        except _Stopped:
            pass
        finally:
            for writer in self.writers:
                try:
                    writer.close()
                except Exception as e:  # noqa: BLE001 - kept for run(); the other writers still close
                    self.close_errors.append(e)

    def _write_frame(self, item: _Generated) -> None:
        frame = item.frame
        for j, writer in enumerate(self.writers):
            if self.faces:
                img = frame.image.copy() if j < len(self.writers) - 1 else frame.image
                for mat, crop in zip(item.matrices, item.results[j]):
                    paste_region(img, _rgb(crop) if img.ndim == 3 else crop, mat)
            else:
                img = _rgb(item.results[j][0])
                if img.shape[0] != self.height:
                    interp = cv2.INTER_AREA if img.shape[0] > self.height else cv2.INTER_CUBIC
                    img = cv2.resize(img, (self.width, self.height), interpolation=interp)
            writer.write(img, frame.pts)
        self.stats.n_written += 1
        if self.on_frame is not None:
            self.on_frame(frame.index, item.matrices)
        if self.progress is not None:
            self.progress.advance(self.task)


def _write_audio(writers: list, packet: Any, mode: str | None) -> None:
    """One source audio packet into every output: copies of the packet (a mux consumes it), or its
    decoded samples for AAC re-encoding."""
    if mode is None:
        return
    if mode == "aac":
        for frame in packet.decode():
            for w in writers:
                w.write_audio_frame(frame)
        return
    import av

    for k, w in enumerate(writers):
        if k == len(writers) - 1:
            w.write_audio_packet(packet)
        else:
            copy = av.Packet(bytes(packet))
            copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
            copy.duration, copy.is_keyframe = packet.duration, packet.is_keyframe
            w.write_audio_packet(copy)
