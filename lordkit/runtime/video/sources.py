"""Video inputs: what counts as one, and reading its frames (PyAV, or OpenCV without the `video` extra).

An input is a video when it is
- a file whose extension is a video container's (VIDEO_EXTENSIONS; GIF stays a still image),
- an image-sequence pattern with a printf field (`frames/%05d.png`), read at SEQUENCE_FPS,
- a camera index (`0`, `1`, ...) that is not the name of an existing file,
- a stream URL (rtsp://, rtmp://, http(s)://, udp://, tcp://, srt://).
All of them go through the same reader. Frames come out upright (rotation metadata applied), as
(H, W, 3) uint8 RGB, each with its presentation timestamp, so that variable frame rates survive.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lordkit.errors import LordkitError
from lordkit.fsutil import check_input_file

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                              ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".mxf", ".vob", ".y4m", ".dv"})
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
SEQUENCE_FPS = 25  # image sequences carry no timing: FFmpeg's and OpenCV's default rate
STREAM_TIMEOUT_S = 10  # opening a stream URL, and waiting for data from it
_PATTERN_RE = re.compile(r"%0?\d*d")
_URL_RE = re.compile(rf"^({'|'.join(URL_SCHEMES)})://", re.IGNORECASE)


@dataclass(frozen=True)
class VideoInput:
    """A video input as given on the command line."""

    text: str  # as given
    kind: str  # "file", "pattern", "camera" or "url"

    @property
    def stem(self) -> str:
        """The name outputs are called after: the file's stem, the pattern's folder, camera<N>, the URL's last part."""
        if self.kind == "file":
            return Path(self.text).stem
        if self.kind == "pattern":
            p = Path(self.text)
            return p.parent.name or _PATTERN_RE.sub("", p.stem) or "frames"
        if self.kind == "camera":
            return f"camera{self.text}"
        tail = self.text.rstrip("/").rsplit("/", 1)[-1]
        return Path(tail.split("?")[0]).stem or "stream"

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "url")


def video_input(text: str) -> VideoInput | None:
    """The input as a VideoInput, or None for anything else (a still image keeps the photo path)."""
    text = str(text)
    if _URL_RE.match(text):
        return VideoInput(text, "url")
    if text.isdigit() and not os.path.lexists(text):
        return VideoInput(text, "camera")
    if _PATTERN_RE.search(Path(text).name) and not os.path.lexists(text):
        return VideoInput(text, "pattern")
    if Path(text).suffix.lower() in VIDEO_EXTENSIONS:
        return VideoInput(text, "file")
    return None


def check_video_file(source: VideoInput) -> None:
    """A video file must be a readable, non-empty regular file (a pattern needs its folder); cheap, before any work."""
    if source.kind == "pattern":
        folder = Path(source.text).parent
        if not folder.is_dir():
            raise LordkitError(f"image sequence {source.text}: folder {folder} not found")
        return
    if source.kind != "file":
        return
    path = source.text
    st = check_input_file(path, "video")
    if st.st_size == 0:
        raise LordkitError(f"{path} is empty, not a video")


def have_pyav() -> bool:
    """Whether the `video` extra (PyAV) can be imported."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Frame:
    """One decoded frame, upright."""

    index: int  # 0, 1, 2, ... in decoding (= presentation) order
    image: np.ndarray  # (H, W, 3) uint8 RGB
    pts: int  # presentation timestamp in the reader's time_base
    time_s: float  # pts in seconds from the source's start


@dataclass
class Audio:
    """Audio from the source, in stream order: PyAV packets to remux, or decoded frames to re-encode."""

    item: Any


@dataclass
class SourceInfo:
    name: str
    width: int  # upright
    height: int
    rate: Fraction  # average frame rate (frames per second)
    time_base: Fraction  # of Frame.pts
    n_frames: int | None  # from the container's header: an estimate, None when unknown (streams)
    rotation: int  # degrees counter-clockwise that were applied to make frames upright
    audio: Any = None  # PyAV's input audio stream, when there is one and it is carried
    audio_codec: str | None = None
    backend: str = "pyav"


def _rot90(img: np.ndarray, degrees: int) -> np.ndarray:
    k = (round(degrees / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def _short(e: BaseException) -> str:
    """An exception as a short lower-case phrase (FFmpeg's reason, without the errno and file name)."""
    text = getattr(e, "strerror", None) or " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text[0].lower() + text[1:] if text else text


class PyAVReader:
    """Frames (and audio) of a video input through PyAV. Use as a context manager; `broken` says
    why reading stopped early (None when the input ended normally)."""

    backend = "pyav"

    def __init__(self, source: VideoInput, *, audio: bool = True):
        import av

        self.source = source
        self.broken: str | None = None
        self._av = av
        self.container = self._open(source)
        try:
            streams = self.container.streams.video
            if not streams:
                raise LordkitError(f"{source.text} has no video stream")
            self.stream = streams[0]
            self.stream.thread_type = "AUTO"  # frame threads: decoding keeps up beside inference
            self.audio_stream = self.container.streams.audio[0] if audio and self.container.streams.audio else None
            self._frames = self._decode()
            self._head: list[Frame | Audio] = []  # audio before the first frame, and the first frame
            for item in self._frames:
                if item is None:
                    raise LordkitError(f"cannot decode {source.text}: {self.broken or 'corrupt video stream'}")
                self._head.append(item)
                if isinstance(item, Frame):
                    break
            if not self._head or not isinstance(self._head[-1], Frame):
                raise LordkitError(f"{source.text} has no video frames (nothing decodable)")
            self.info = self._info(self._head[-1])
        except BaseException:
            self.container.close()
            raise

    def _open(self, source: VideoInput):
        av = self._av
        text, options, fmt = source.text, {}, None
        if source.kind == "pattern":
            fmt, options = "image2", {"framerate": str(SEQUENCE_FPS)}
        elif source.kind == "url":
            options = {"rw_timeout": str(STREAM_TIMEOUT_S * 1_000_000)}
            if text.lower().startswith("rtsp"):
                options["rtsp_transport"] = "tcp"
        elif source.kind == "camera":
            if sys.platform.startswith("linux"):
                text, fmt = f"/dev/video{int(source.text)}", "v4l2"
            elif sys.platform == "darwin":
                fmt = "avfoundation"
            else:
                raise LordkitError("camera inputs need OpenCV on this system; uninstall PyAV or give a file")
        try:
            return av.open(text, format=fmt, options=options, timeout=STREAM_TIMEOUT_S if source.live else None)
        except (EOFError, av.error.EOFError):
            raise LordkitError(f"{source.text} has no video frames (it ends before the first one)") from None
        except FileNotFoundError:
            if source.kind == "pattern":
                raise LordkitError(f"no files match the image sequence {source.text}") from None
            if source.kind == "camera":
                raise LordkitError(f"camera {source.text} not found") from None
            raise LordkitError(f"video not found: {source.text}") from None
        except PermissionError:
            raise LordkitError(f"cannot read {source.text}: permission denied") from None
        except av.error.InvalidDataError:
            raise LordkitError(f"cannot read {source.text}: invalid data (not a video, or a corrupt or truncated "
                               "file)") from None
        except (av.error.FFmpegError, OSError) as e:
            what = "stream" if source.live else "video"
            raise LordkitError(f"cannot open {what} {source.text}: {_short(e)}") from None

    def _rotation(self, frame) -> int:
        rotation = int(getattr(frame, "rotation", 0) or 0)
        if rotation == 0:  # files from older muxers: a clockwise `rotate` tag on the stream
            tag = self.stream.metadata.get("rotate")
            if tag and tag.lstrip("-").isdigit():
                rotation = -int(tag)
        return rotation

    def _info(self, first: Frame) -> SourceInfo:
        s = self.stream
        rate = s.average_rate or s.guessed_rate or s.base_rate or Fraction(SEQUENCE_FPS)
        n = int(s.frames or 0)
        if n <= 0 and s.duration and s.time_base:
            n = round(float(s.duration * s.time_base * rate))
        elif n <= 0 and self.container.duration:
            n = round(self.container.duration / 1_000_000 * float(rate))
        a = self.audio_stream
        return SourceInfo(name=self.source.text, width=first.image.shape[1], height=first.image.shape[0],
                          rate=Fraction(rate), time_base=self._time_base, n_frames=n if n > 0 and not self.source.live else None,
                          rotation=self._rot, audio=a, audio_codec=a.codec_context.name if a is not None else None)

    def _decode(self) -> Iterator[Frame | Audio | None]:
        """Frames and audio packets in stream order. A failure before the first frame yields None;
        after it, reading stops and `broken` says why."""
        av = self._av
        streams = [self.stream] + ([self.audio_stream] if self.audio_stream is not None else [])
        index, last_pts = 0, None
        self._time_base = self.stream.time_base or Fraction(1, SEQUENCE_FPS)
        self._rot = 0
        start_pts = None
        step = None
        self._end_s: float | None = None  # the latest packet end of any stream, seconds from the container's start
        origin_s = (self.container.start_time or 0) / 1_000_000
        try:
            for packet in self.container.demux(streams):
                if packet.pts is not None and packet.time_base:
                    end_s = float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin_s
                    self._end_s = end_s if self._end_s is None else max(self._end_s, end_s)
                if packet.stream.type == "audio":
                    if packet.dts is not None:  # the empty flushing packet is not data
                        yield Audio(packet)
                    continue
                for frame in packet.decode():
                    if index == 0:
                        self._rot = self._rotation(frame)
                        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(SEQUENCE_FPS)
                        step = max(1, round(1 / (float(rate) * float(self._time_base))))
                    pts = frame.pts if frame.pts is not None else (last_pts + step if last_pts is not None else 0)
                    if last_pts is not None and pts <= last_pts:
                        pts = last_pts + 1  # never repeat or go back: muxers refuse it
                    if start_pts is None:
                        start_pts = pts
                    image = _rot90(frame.to_ndarray(format="rgb24"), self._rot)
                    yield Frame(index, image, pts, float((pts - start_pts) * self._time_base))
                    index, last_pts = index + 1, pts
        except (av.error.FFmpegError, OSError, ValueError) as e:
            self.broken = _short(e)
            if index == 0:
                yield None

    def __iter__(self) -> Iterator[Frame | Audio]:
        yield from self._head
        for item in self._frames:
            if item is not None:
                yield item
        # A truncated file ends without an error: compare with the duration its header declares.
        c = self.container
        if self.broken is None and not self.source.live and c.duration and self._end_s is not None:
            declared_s = (c.duration - (c.start_time or 0)) / 1_000_000
            if self._end_s < declared_s - max(1.0, 0.1 * declared_s):
                self.broken = (f"it ends at {self._end_s:.1f} s of the {declared_s:.1f} s its header declares "
                               "(truncated?)")

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "PyAVReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OpenCVReader:
    """Frames through OpenCV's VideoCapture (no audio; constant rate; rotation as OpenCV applies it)."""

    backend = "opencv"

    def __init__(self, source: VideoInput, *, audio: bool = False):
        import cv2

        self.source = source
        self.broken: str | None = None
        self._cv2 = cv2
        target: Any = int(source.text) if source.kind == "camera" else source.text
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            self.cap.release()
            if source.kind == "pattern":
                raise LordkitError(f"no files match the image sequence {source.text}")
            what = "camera" if source.kind == "camera" else "stream" if source.live else "video"
            raise LordkitError(f"cannot open {what} {source.text} (OpenCV's decoders do not accept it)")
        ok, first = self.cap.read()
        if not ok or first is None:
            self.cap.release()
            raise LordkitError(f"{source.text} has no video frames (nothing decodable)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        rate = Fraction(fps).limit_denominator(1001) if fps and 0 < fps < 1000 else Fraction(SEQUENCE_FPS)
        self._first = self._rgb(first)
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.info = SourceInfo(name=source.text, width=self._first.shape[1], height=self._first.shape[0], rate=rate,
                               time_base=1 / rate, n_frames=n if n > 0 and not source.live else None, rotation=0,
                               backend="opencv")

    def _rgb(self, img: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return np.ascontiguousarray(img[..., ::-1])

    def __iter__(self) -> Iterator[Frame]:
        rate = self.info.rate
        yield Frame(0, self._first, 0, 0.0)
        index = 1
        while True:
            try:
                ok, img = self.cap.read()
            except self._cv2.error as e:
                self.broken = _short(e)
                return
            if not ok or img is None:
                return
            yield Frame(index, self._rgb(img), index, float(index / rate))
            index += 1

    def close(self) -> None:
        self.cap.release()

    def __enter__(self) -> "OpenCVReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_reader(source: VideoInput, *, backend: str = "auto", audio: bool = True) -> PyAVReader | OpenCVReader:
    """A reader for `source`: PyAV when installed (backend "auto" or "pyav"), else OpenCV."""
    if backend == "opencv" or (backend == "auto" and not have_pyav()):
        return OpenCVReader(source)
    return PyAVReader(source, audio=audio)


class Pump(threading.Thread):
    """A daemon thread that runs `work()`, keeps its exception for the consumer to re-raise, and sets
    `stop` when it fails."""

    def __init__(self, name: str, work: Callable[[], None], stop: threading.Event | None = None):
        super().__init__(name=name, daemon=True)
        self.work, self.stop = work, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # re-raised in the main thread
            self.error = e
            if self.stop is not None:
                self.stop.set()  # the other stages give up instead of waiting on a dead one
