"""Writing the output video: PyAV (H.264, else MPEG-4 Part 2; source timestamps and audio kept), or
OpenCV's VideoWriter without the `video` extra (constant rate, no audio).

Each output is written inside a temporary folder beside it (lordkit.fsutil's naming, so a crashed
run's leftovers are cleared by the next command) and renamed into place by `commit()`, which runs
after the container is finalised: the name only ever holds a playable file.

PyAV writes into a file object of ours (`_OutputFile`), never into a path: a failed write (a full
disk, a quota, a file-size limit) is kept there and raised by the writer as an OSError naming the
output the user asked for, while FFmpeg only ever sees writes succeed. libavformat does not survive
its own write errors (a failed header, then the trailer at close, crashes the process).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lordkit.errors import LordkitError
from lordkit.fsutil import current_umask, temp_prefix

H264_ENCODERS = ("libx264", "h264", "libopenh264")  # the first one this PyAV build has is used
FALLBACK_ENCODER = "mpeg4"  # MPEG-4 Part 2: in every FFmpeg build
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
X264_OPTIONS = {"preset": "veryfast", "crf": "18"}  # near-transparent quality at a small CPU cost
MPEG4_QSCALE = 3  # fixed quantiser for mpeg4 (2 = best, 31 = worst)
MPEG4_MAX_TB_DENOMINATOR = 65535  # the MPEG-4 Part 2 standard's limit
MAX_TB_DENOMINATOR = 1 << 20  # finer than any clock a source uses (90 kHz, 1/15360, ...)


def video_encoder() -> str:
    """The name of the H.264 encoder this PyAV build has, else 'mpeg4'."""
    import av

    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # not in this build (UnknownCodecError), or decoder-only
            continue
        return name
    return FALLBACK_ENCODER


def output_time_base(rate: Fraction, source_time_base: Fraction, max_denominator: int) -> Fraction:
    """A time base that holds both the source's ticks and exact multiples of 1 / rate (a 30 fps video
    from a millisecond clock gets 1/3000 s), so constant-rate frames come out exactly on the grid;
    the source's own base when that would be finer than `max_denominator` allows."""
    rate, source_time_base = Fraction(rate), Fraction(source_time_base)
    a, b = source_time_base.denominator, rate.numerator
    common = a * b // math.gcd(a, b)
    if common <= max_denominator:
        return Fraction(1, common)
    if source_time_base.denominator <= max_denominator:
        return source_time_base
    return Fraction(1, max_denominator)  # finer bases are refused: frame times are rounded to it


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p needs even sides: odd ones get one pixel of padding (the last row/column repeated)."""
    return width + width % 2, height + height % 2


def pad_even(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return img
    return np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _named(e: OSError, path: Path) -> OSError:
    """The same OS error, naming the output the user asked for instead of a temporary name."""
    return OSError(e.errno, e.strerror or str(e), str(path))


class _Staged:
    """A temporary folder beside `path` holding the file while it is written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=temp_prefix(self.path.name), suffix=".tmp",
                                             dir=self.path.parent))
        except OSError as e:
            raise _named(e, self.path) from None
        try:
            os.chmod(self.dir, 0o777 & ~current_umask())
        except OSError as e:
            self.discard()
            raise _named(e, self.path) from None
        self.file = self.dir / self.path.name

    def commit(self) -> Path:
        try:
            if self.file.exists():
                os.chmod(self.file, 0o666 & ~current_umask())
                os.replace(self.file, self.path)
        except OSError as e:
            raise _named(e, self.path) from None
        finally:
            self.discard()
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _OutputFile:
    """The file object PyAV writes a container into. Writes and seeks go to the staged file until one
    fails; from then on they are only counted, so FFmpeg finishes its work on what it believes is a
    file, and the first error waits in `error`, naming the user's output, for the writer to raise."""

    def __init__(self, file: Path, shown: Path):
        self.name = str(shown)  # PyAV words its own messages with the container's name
        self.shown = shown
        self.error: OSError | None = None
        self.pos = self.size = 0
        try:
            self.fd: int | None = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0),
                                          0o666)
        except OSError as e:
            raise _named(e, shown) from None

    @property
    def closed(self) -> bool:
        return self.fd is None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _fail(self, e: OSError) -> None:
        if self.error is None:
            self.error = _named(e, self.shown)

    def write(self, data: bytes) -> int:
        n = len(data)
        if self.error is None and self.fd is not None:
            view = memoryview(data)
            try:
                while view:  # os.write may write less than asked; FFmpeg would not retry the rest
                    view = view[os.write(self.fd, view):]
            except OSError as e:
                self._fail(e)
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        start = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = start + offset
        if self.error is None and self.fd is not None:
            try:
                os.lseek(self.fd, self.pos, os.SEEK_SET)
            except OSError as e:
                self._fail(e)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        """Make the bytes durable and close; a failure here is the file's error too."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if self.error is None:
                os.fsync(fd)  # where a filesystem reports space it could not find at write time
        except OSError as e:
            if e.errno != errno.EINVAL:  # a file that cannot be synced (a pipe, some FUSE mounts)
                self._fail(e)
        finally:
            os.close(fd)


class PyAVWriter:
    """One output video through PyAV. Frames keep the source's timestamps (variable rates survive);
    audio packets are remuxed when the container takes their codec, else re-encoded to AAC."""

    backend = "pyav"

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, time_base: Fraction,
                 audio_stream: Any = None, warn: Callable[[str], None] | None = None):
        import av

        self._av = av
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in CONTAINERS:
            raise LordkitError(f"cannot write {self.path}: use one of {', '.join(sorted(CONTAINERS))} for videos")
        self.staged = _Staged(self.path)
        self.n_frames = 0
        self.audio_mode: str | None = None  # "copy" or "aac"
        try:
            self.file = _OutputFile(self.staged.file, self.path)
        except BaseException:
            self.staged.discard()
            raise
        self._raised = False  # the file's error has reached the caller
        try:
            self.container = av.open(self.file, "w", format=CONTAINERS[ext])
        except (av.error.FFmpegError, OSError) as e:
            self.file.close()
            self.staged.discard()
            raise LordkitError(f"cannot write {self.path}: {e}") from None
        try:
            self.encoder = video_encoder()
            self.rate, self.source_time_base = Fraction(rate), Fraction(time_base)
            tb = output_time_base(self.rate, self.source_time_base,
                                  MPEG4_MAX_TB_DENOMINATOR if self.encoder == FALLBACK_ENCODER else MAX_TB_DENOMINATOR)
            self.time_base = tb
            self.width, self.height = even_size(width, height)
            stream = self.container.add_stream(self.encoder, rate=rate)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            stream.codec_context.time_base = tb
            stream.time_base = tb
            if self.encoder == "libx264":
                stream.options = dict(X264_OPTIONS)
            elif self.encoder == FALLBACK_ENCODER:
                # FFmpeg's -q:v: a fixed quantiser, given as a lambda (FF_QP2LAMBDA = 118 per step).
                stream.options = {"flags": "+qscale", "global_quality": str(MPEG4_QSCALE * 118)}
            self.stream = stream
            self.audio = self._audio_stream(audio_stream) if audio_stream is not None else None
            self._last_pts: int | None = None
        except BaseException:
            self.container.close()
            self.file.close()
            self.staged.discard()
            raise

    def _check(self) -> None:
        """Raise the output file's write error (once), naming the user's output."""
        if self.file.error is not None and not self._raised:
            self._raised = True
            raise self.file.error

    def _audio_stream(self, source: Any):
        """The output audio stream: a copy of the source's when the container accepts its codec, else AAC."""
        try:
            out = self.container.add_stream_from_template(source)
            self.audio_mode = "copy"
            return out
        except (ValueError, self._av.error.FFmpegError):
            pass
        cc = source.codec_context
        layout = {1: "mono"}.get(cc.channels, "stereo")  # AAC takes named layouts; more channels are downmixed
        out = self.container.add_stream("aac", rate=cc.sample_rate or 48000, layout=layout)
        self._resampler = self._av.AudioResampler(format=out.codec_context.format.name, layout=layout,
                                                  rate=out.codec_context.sample_rate, frame_size=1024)
        self.audio_mode = "aac"
        return out

    def write(self, image: np.ndarray, pts: int) -> None:
        """One RGB frame (H, W, 3) uint8 at `pts` in the source's time base."""
        av = self._av
        t = pts * self.source_time_base
        on_grid = Fraction(round(t * self.rate)) / self.rate
        if abs(t - on_grid) <= self.source_time_base / 2:  # a constant-rate frame, rounded by the source's clock
            t = on_grid
        pts = round(t / self.time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(pad_even(image), format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.n_frames += 1
        self._check()

    def write_audio_packet(self, packet: Any) -> None:
        """A source audio packet, muxed as it is (audio mode "copy"); the mux consumes the packet."""
        packet.stream = self.audio  # PyAV rescales its timestamps to the output stream's time base
        self.container.mux(packet)
        self._check()

    def write_audio_frame(self, frame: Any) -> None:
        """Decoded source samples, re-encoded to AAC (audio mode "aac")."""
        self._encode_audio(frame)
        self._check()

    def _encode_audio(self, frame: Any) -> None:
        for f in self._resampler.resample(frame):
            for packet in self.audio.encode(f):
                self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoders, finalise the container and close the file (always call it, also after
        an interruption); an OSError naming the output if the file could not be written whole."""
        av = self._av
        try:
            if self.file.error is None:  # a failed output is not worth flushing: it will be removed
                with contextlib.suppress(av.error.FFmpegError, ValueError):
                    for packet in self.stream.encode(None):
                        self.container.mux(packet)
                if self.audio is not None and self.audio_mode == "aac":
                    with contextlib.suppress(av.error.FFmpegError, ValueError):
                        self._encode_audio(None)
                        for packet in self.audio.encode(None):
                            self.container.mux(packet)
        finally:
            try:
                self.container.close()
            finally:
                self.file.close()
        self._check()


def _disk_full(path: Path) -> bool:
    """The filesystem holding `path` has no block left for this user (False where that cannot be told)."""
    try:
        return os.statvfs(path).f_bavail == 0
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


class OpenCVWriter:
    """One output video through OpenCV's VideoWriter: MPEG-4 Part 2 at a constant rate, no audio.

    OpenCV reports no write errors: a file cut short by a full disk reads back with its header's
    frame count. So the writer looks at the free space every FULL_CHECK_FRAMES frames and at the end,
    and takes a full filesystem for a failed write. A quota or a file-size limit goes unnoticed here."""

    FULL_CHECK_FRAMES = 16

    backend = "opencv"
    encoder = "mp4v"
    audio_mode = None

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, time_base: Fraction,
                 audio_stream: Any = None, warn: Callable[[str], None] | None = None):
        import cv2

        self.path = Path(path)
        if self.path.suffix.lower() not in CONTAINERS:
            raise LordkitError(f"cannot write {self.path}: use one of {', '.join(sorted(CONTAINERS))} for videos")
        self.staged = _Staged(self.path)
        self.width, self.height = even_size(width, height)
        fourcc = cv2.VideoWriter_fourcc(*("XVID" if self.path.suffix.lower() == ".avi" else "mp4v"))
        self.writer = cv2.VideoWriter(str(self.staged.file), fourcc, float(rate), (self.width, self.height))
        if not self.writer.isOpened():
            self.staged.discard()
            raise LordkitError(f"cannot write {self.path}: OpenCV has no encoder for it")
        self.n_frames = 0

    def write(self, image: np.ndarray, pts: int) -> None:
        self.writer.write(np.ascontiguousarray(pad_even(image)[..., ::-1]))
        self.n_frames += 1
        if self.n_frames % self.FULL_CHECK_FRAMES == 0:
            self._check()

    def write_audio_packet(self, packet: Any) -> None:
        pass

    def write_audio_frame(self, frame: Any) -> None:
        pass

    def _check(self) -> None:
        if _disk_full(self.staged.dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def close(self) -> None:
        self.writer.release()
        self._check()


def open_writer(backend: str, path: Path, width: int, height: int, rate: Fraction, time_base: Fraction,
                audio_stream: Any = None) -> PyAVWriter | OpenCVWriter:
    cls = PyAVWriter if backend == "pyav" else OpenCVWriter
    return cls(path, width, height, rate, time_base, audio_stream)
