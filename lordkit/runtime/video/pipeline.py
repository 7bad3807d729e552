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

from lordkit.errors import LordkitError
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


def transfer_video(t, source: VideoInput, class_codes: np.ndarray, outputs: list[Path], *,
                   out_size: int | None = None, detect_every: int = DETECT_EVERY, all_faces: bool = False,
                   smooth: bool = True, min_cutoff_hz: float = MIN_CUTOFF_HZ, beta: float = BETA,
                   d_cutoff_hz: float = D_CUTOFF_HZ, backend: str = "auto", audio: bool = True,
                   progress: Any = None, max_frames: int | None = None,
                   on_frame: Callable[[int, list[np.ndarray]], None] | None = None) -> VideoResult:
    """Draw the video `source` in each class of `class_codes` (M, class_dim), one output file per class.

    t: an open lordkit.runtime.Transfer. Face models (aligning) paste the generated face back into
    each full frame; other models write the model's result, resized to out_size when given.
    progress: a rich Progress (lordkit.console.make_progress) to advance, or None.
    max_frames: stop after this many frames (None: the whole video).
    on_frame: called from the encode thread with (frame index, the faces' smoothed transforms).
    A source that breaks off mid-way ends the run normally with `broken` set; the outputs then hold
    every frame read before it. Raises LordkitError for unreadable inputs (nothing is written) and
    when a face model finds no face in any frame (the outputs are removed).
    """
    class_codes = np.asarray(class_codes, np.float32)
    m_classes = len(class_codes)
    if m_classes != len(outputs) or m_classes == 0:
        raise ValueError(f"{m_classes} classes for {len(outputs)} outputs")
    faces = bool(t.preparer.align)
    size, channels = t.img_size, t.channels
    reader = open_reader(source, backend=backend, audio=audio)
    info = reader.info
    stop = threading.Event()
    busy = {"decode": 0.0, "align": 0.0, "generate": 0.0, "encode": 0.0}
    counts = {"written": 0, "no_face": 0, "with_face": 0}
    tracker = (FaceTracker(t.preparer, detect_every=detect_every, all_faces=all_faces, smooth=smooth,
                           min_cutoff_hz=min_cutoff_hz, beta=beta, d_cutoff_hz=d_cutoff_hz) if faces else None)
    if faces:
        width, height = info.width, info.height
    else:
        width = height = int(out_size or size)
    writers: list = []
    try:
        for path in outputs:
            writers.append(open_writer(reader.backend, path, width, height, info.rate, info.time_base,
                                       info.audio if audio else None))
    except BaseException:
        for w in writers:
            w.close()
            w.staged.discard()
        reader.close()
        raise
    audio_mode = writers[0].audio_mode
    cap = max(1, QUEUE_BATCHES * t.batch_size)
    q_decoded: queue.Queue = queue.Queue(cap)
    q_aligned: queue.Queue = queue.Queue(cap)
    q_generated: queue.Queue = queue.Queue(cap)

    def decode() -> None:
        try:
            clock = time.perf_counter()
            n = 0
            for item in reader:
                busy["decode"] += time.perf_counter() - clock
                if isinstance(item, Frame):
                    if max_frames is not None and n >= max_frames:
                        break
                    n += 1
                _put(q_decoded, item, stop)
                clock = time.perf_counter()
            _put(q_decoded, _END, stop)
        except _Stopped:
            pass

    def align() -> None:
        from lordkit.faces import warp_face
        from lordkit.imaging import square_resize

        try:
            while True:
                item = _get(q_decoded, stop)
                if not isinstance(item, Frame):
                    _put(q_aligned, item, stop)
                    if item is _END:
                        return
                    continue
                clock = time.perf_counter()
                if faces:
                    found = tracker(item.image, item.time_s)
                    matrices = [f.matrix for f in found]
                    crops = []
                    for mat in matrices:
                        crop = warp_face(item.image, mat, size)
                        if channels == 1:
                            crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
                        crops.append(crop.reshape(size, size, channels))
                else:
                    matrices, crops = [], [square_resize(item.image, size, channels)]
                busy["align"] += time.perf_counter() - clock
                _put(q_aligned, _Aligned(item, crops, matrices), stop)
        except _Stopped:
            pass

    def encode() -> None:
        try:
            while True:
                item = _get(q_generated, stop)
                if item is _END:
                    return
                clock = time.perf_counter()
                if isinstance(item, Audio):
                    _write_audio(writers, item.item, audio_mode)
                else:
                    frame = item.frame
                    for j, writer in enumerate(writers):
                        if faces:
                            img = frame.image.copy() if j < len(writers) - 1 else frame.image
                            for mat, crop in zip(item.matrices, item.results[j]):
                                paste_region(img, _rgb(crop) if img.ndim == 3 else crop, mat)
                        else:
                            img = _rgb(item.results[j][0])
                            if img.shape[0] != height:
                                interp = cv2.INTER_AREA if img.shape[0] > height else cv2.INTER_CUBIC
                                img = cv2.resize(img, (width, height), interpolation=interp)
                        writer.write(img, frame.pts)
                    counts["written"] += 1
                    if on_frame is not None:
                        on_frame(frame.index, item.matrices)
                    if progress is not None:
                        progress.advance(task)
                busy["encode"] += time.perf_counter() - clock
        except _Stopped:
            pass
        finally:
            for writer in writers:  # finalised whatever happened: what was written plays
                try:
                    writer.close()
                except Exception as e:  # noqa: BLE001 - kept for the caller; the other writers still close
                    encode_close_errors.append(e)

    encode_close_errors: list[BaseException] = []
    task = progress.add_task("video", total=info.n_frames if max_frames is None else
                             min(max_frames, info.n_frames or max_frames), unit="frame") if progress is not None else None
    threads = [Pump("lordkit-decode", decode, stop), Pump("lordkit-align", align, stop),
               Pump("lordkit-encode", encode, stop)]
    start = time.perf_counter()
    interrupted = False
    ok = False
    try:
        for th in threads:
            th.start()
        _generate_loop(t, class_codes, q_aligned, q_generated, stop, busy, counts, threads)
        threads[2].join()
        for th in threads:
            if th.error is not None:
                raise th.error
        if encode_close_errors:
            raise encode_close_errors[0]
        ok = True
    except KeyboardInterrupt as e:
        interrupted, interrupt = True, e
        raise
    finally:
        stop.set() if not ok else None
        for th in threads:
            th.join(timeout=60)
        reader.close()
        seconds = time.perf_counter() - start
        no_face_anywhere = faces and counts["written"] > 0 and counts["with_face"] == 0 and not interrupted
        keep = (ok or interrupted) and not no_face_anywhere and counts["written"] > 0
        for w in writers:
            if keep:
                w.staged.commit()
            else:
                w.staged.discard()
        if interrupted:  # for the caller's message: how much the finalised outputs hold
            interrupt.video_frames = counts["written"] if keep else 0
            interrupt.video_outputs = list(outputs) if keep else []
    if no_face_anywhere:
        raise LordkitError(f"no face found in any of the {counts['written']} frames of {source.text}; "
                           "pass --no-align for videos of aligned crops")
    return VideoResult(outputs=list(outputs), n_frames=counts["written"], n_no_face=counts["no_face"],
                       n_frames_expected=info.n_frames, rate=info.rate, backend=reader.backend,
                       encoder=getattr(writers[0], "encoder", "?"), audio=audio_mode, broken=reader.broken,
                       n_detections=tracker.n_detections if tracker is not None else 0, seconds=seconds,
                       stage_seconds={k: round(v, 3) for k, v in busy.items()})


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


def _generate_loop(t, class_codes: np.ndarray, q_in: queue.Queue, q_out: queue.Queue, stop: threading.Event,
                   busy: dict, counts: dict, threads: list[Pump]) -> None:
    """The calling thread's stage: gather crops into batches, encode contents, generate every pair."""
    from lordkit.runtime.images import to_uint8_image

    m = len(class_codes)
    pending: list[Any] = []  # frames (with their crops) and audio, in stream order
    n_crops = 0

    def flush() -> None:
        nonlocal pending, n_crops
        crops = [c for item in pending if isinstance(item, _Aligned) for c in item.crops]
        clock = time.perf_counter()
        flat: list[np.ndarray] = []
        if crops:
            cc = t.content_codes(crops)
            for _, _, imgs in t.generate_iter(cc, class_codes):  # pair p = crop p // m in class p % m
                flat += [to_uint8_image(img) for img in imgs]
        busy["generate"] += time.perf_counter() - clock
        k = 0
        for item in pending:
            if isinstance(item, _Aligned):
                n = len(item.crops)
                results = [[flat[(k + i) * m + j] for i in range(n)] for j in range(m)]
                k += n
                if item.matrices or not item.crops:
                    counts["with_face" if item.crops else "no_face"] += 1
                _put(q_out, _Generated(item.frame, item.matrices, results), stop)
            else:
                _put(q_out, item, stop)
        pending, n_crops = [], 0

    try:
        while True:
            try:
                item = q_in.get(timeout=_POLL_S)
            except queue.Empty:
                if stop.is_set() or (not threads[1].is_alive() and q_in.empty()):
                    raise _Stopped() from None
                continue
            if item is _END:
                flush()
                _put(q_out, _END, stop)
                return
            pending.append(item)
            if isinstance(item, _Aligned):
                n_crops += len(item.crops)
            if n_crops >= t.batch_size:
                flush()
    except _Stopped:
        for th in threads:
            if th.error is not None:
                raise th.error from None
        raise LordkitError("video transfer stopped: a stage ended without a result") from None
