"""The one pixel limit of every image decoded by lordkit, how OpenCV reports hitting a limit, and the
check of PNG files that keeps libpng quiet (png_for_decoder).

Import this module before cv2: OpenCV reads its decoder limit (OPENCV_IO_MAX_IMAGE_PIXELS) once,
when it is imported, so a process that imported cv2 earlier keeps OpenCV's default (2^30 pixels).
The runtime (lordkit.runtime.images) also reads the limit from file headers before decoding.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

MAX_PIXELS = 100_000_000  # refuse anything larger (a 10000 x 10000 photo is the largest square accepted)
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

PIXELS, MEMORY = "pixels", "memory"


def decode_failure(error: Exception) -> str | None:
    """Which limit a cv2.error from a decoder means: PIXELS (OpenCV's pixel limit), MEMORY (an
    allocation the header asked for failed), or None (a broken file). OpenCV says so only in text."""
    text = str(error)
    if "CV_IO_MAX_IMAGE_PIXELS" in text:
        return PIXELS
    if "Insufficient memory" in text or "Failed to allocate" in text:
        return MEMORY
    return None


# ---------------------------------------------------------------------------------------------
# PNG files are checked here before OpenCV sees them. OpenCV's libpng prints its own errors and
# warnings ("libpng error: PNG input buffer is incomplete", "libpng warning: zTXt: ...") straight
# to file descriptor 2, where no Python code can catch them. So the bytes are checked first, and
# OpenCV gets a PNG that libpng has nothing to say about: every chunk whole with a correct CRC,
# IHDR valid, the image data a complete zlib stream of exactly the size IHDR implies with valid
# filter bytes, and only the chunks that change the decoded pixels (IHDR, PLTE, tRNS, gAMA or
# sRGB, eXIf, IDAT, IEND). Text, ICC profiles, animation and other metadata are dropped unread.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MAX_SIDE = 1_000_000  # libpng's own limit on width and height
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # colour type -> bit depths
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_BLOCK = 1 << 24  # decompressed bytes checked at a time: bounded memory whatever the image


class PngProblem(ValueError):
    """What is wrong with a PNG file, in words for one line ("truncated", "corrupt ...")."""


def _png_rows(width: int, height: int, colour_type: int, depth: int, interlaced: bool) -> list[tuple[int, int]]:
    """(rows, bytes per row including the filter byte) of each pass of the image data."""
    bits = _PNG_CHANNELS[colour_type] * depth
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    out = []
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            out.append((h, 1 + (w * bits + 7) // 8))
    return out


def _check_idat(chunks: list[bytes | memoryview], rows: list[tuple[int, int]]) -> None:
    """The image data must inflate to exactly the size the header implies, with a filter type
    (0-4) at the start of every row, and end there (libpng stops on anything else, loudly)."""
    starts = np.concatenate([np.arange(n, dtype=np.int64) * stride + offset for (n, stride), offset
                             in zip(rows, np.cumsum([0] + [n * stride for n, stride in rows])[:-1])])
    expected = sum(n * stride for n, stride in rows)
    inflate, pos = zlib.decompressobj(), 0
    try:
        for data in chunks:
            while data:
                block = inflate.decompress(data, _INFLATE_BLOCK)
                data = inflate.unconsumed_tail
                if pos + len(block) > expected:
                    raise PngProblem("corrupt PNG file: more image data than its size holds")
                first, last = np.searchsorted(starts, [pos, pos + len(block)])
                if last > first and np.frombuffer(block, np.uint8)[starts[first:last] - pos].max() > 4:
                    raise PngProblem("corrupt PNG file: bad row filter type")
                pos += len(block)
                if inflate.eof:
                    break
            if inflate.eof and (data or inflate.unused_data):
                raise PngProblem("corrupt PNG file: data after the end of its image")
    except zlib.error as e:
        raise PngProblem(f"corrupt PNG file: {str(e).split(': ', 1)[-1]}") from None
    if not inflate.eof or pos != expected:
        raise PngProblem("truncated or corrupt PNG file: image data ends early")


def png_for_decoder(data: np.ndarray) -> np.ndarray:
    """The bytes (uint8 array) of a PNG file to give cv2.imdecode: `data` itself if every chunk is
    kept, else a copy with only the chunks that change the pixels. PngProblem if libpng would fail
    on the file or print a warning about it."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    buf = memoryview(data).cast("B")
    size = len(buf)
    if bytes(buf[:8]) != PNG_SIGNATURE:
        raise PngProblem("not a PNG file")
    kept: list[tuple[bytes, memoryview]] = [(b"", buf[:8])]
    idat: list[memoryview] = []
    header = None
    seen: set[bytes] = set()
    n_palette = 0
    last = b""
    pos = 8
    while True:
        if pos + 12 > size:
            raise PngProblem("truncated or corrupt PNG file: it ends before its last chunk")
        length, kind = struct.unpack(">I4s", buf[pos:pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise PngProblem(f"truncated or corrupt PNG file: its {kind.decode('latin1')!r} chunk runs past the end")
        body = buf[pos + 8:pos + 8 + length]
        critical = not kind[0] & 0x20
        keep = critical or (kind in (b"tRNS", b"gAMA", b"sRGB", b"eXIf") and kind not in seen and b"IDAT" not in seen)
        if keep:  # dropped chunks need no checksum: nothing reads them
            if zlib.crc32(buf[pos + 4:pos + 8 + length]) != struct.unpack(">I", buf[end - 4:end])[0]:
                raise PngProblem(f"corrupt PNG file: bad checksum in its {kind.decode('latin1')!r} chunk")
        if header is None and kind != b"IHDR":
            raise PngProblem("corrupt PNG file: it does not start with a header")
        if kind == b"IHDR":
            if header is not None or length != 13:
                raise PngProblem("corrupt PNG file: bad header")
            width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if (not 0 < width <= PNG_MAX_SIDE or not 0 < height <= PNG_MAX_SIDE or colour not in _PNG_DEPTHS
                    or depth not in _PNG_DEPTHS[colour] or compression or filtering or interlace > 1):
                raise PngProblem(f"corrupt or unsupported PNG header ({width}x{height}, bit depth {depth}, "
                                 f"colour type {colour}, interlace {interlace})")
            header = (width, height, colour, depth, bool(interlace))
        elif kind == b"PLTE":
            if b"PLTE" in seen or b"IDAT" in seen or length % 3 or not 0 < length // 3 <= 256:
                raise PngProblem("corrupt PNG file: bad palette")
            n_palette = length // 3
            keep = colour == 3  # elsewhere only a suggestion for 8-bit displays
        elif kind == b"IDAT":
            if b"IDAT" in seen and last != b"IDAT":
                raise PngProblem("corrupt PNG file: its image data is split by other chunks")
            if colour == 3 and not n_palette:
                raise PngProblem("corrupt PNG file: a palette image without a palette")
            idat.append(body)
        elif kind == b"IEND":
            if not idat:
                raise PngProblem("corrupt PNG file: no image data")
        elif critical:
            raise PngProblem(f"unsupported PNG file: unknown critical chunk {kind.decode('latin1')!r}")
        elif keep:
            keep = _ancillary_ok(kind, body, colour, depth, n_palette, seen)
            if keep and kind == b"sRGB":  # sRGB sets the gamma: a gAMA beside it is only checked against it
                kept = [(k, c) for k, c in kept if k != b"gAMA"]
        if keep:
            kept.append((kind, buf[pos:end]))
        seen.add(kind)
        last = kind
        pos = end
        if kind == b"IEND":
            break
    _check_idat(idat, _png_rows(*header[:2], header[2], header[3], header[4]))
    if pos == size and sum(len(c) for _, c in kept) == size:
        return data
    return np.frombuffer(b"".join(c for _, c in kept), np.uint8)  # without what libpng would warn about or ignore, nor bytes after IEND


def _ancillary_ok(kind: bytes, body, colour: int, depth: int, n_palette: int, seen: set[bytes]) -> bool:
    """Whether libpng takes this tRNS / gAMA / sRGB / eXIf chunk without a word; otherwise it is
    dropped, which is what libpng does with it too (after printing a warning)."""
    n = len(body)
    if kind == b"tRNS":
        if colour == 3:
            return b"PLTE" in seen and 0 < n <= n_palette
        if colour in (0, 2):
            if n != (2 if colour == 0 else 6):
                return False
            return all(v < 1 << depth for v in struct.unpack(f">{n // 2}H", body))
        return False  # images with an alpha channel have no tRNS
    if b"PLTE" in seen:
        return False  # colour-space chunks come before the palette
    if kind == b"gAMA":
        return n == 4 and 16 <= struct.unpack(">I", body)[0] <= 625_000_000 and b"sRGB" not in seen
    if kind == b"sRGB":
        return n == 1 and body[0] <= 3
    if kind == b"eXIf":
        return 8 <= n <= 1 << 16 and bytes(body[:4]) in (b"MM\x00*", b"II*\x00")
    return False
