"""Reading photos for the runtime: size checks before decoding, bounded memory, alpha and channel handling.

Every problem a user can fix is a LordkitError with one line naming the file. Conversions that
still give a usable image (grey into a colour model, transparency) are not errors: they are
reported through a `warn` callback as one line each.

What happens to each kind of input
----------------------------------
- not a file, unreadable, empty, or bytes no decoder accepts: LordkitError.
- a known header followed by pixels the decoder rejects (a truncated PNG): LordkitError. OpenCV's
  own log lines are silenced, so that the error is the only line. PNG files are checked chunk by
  chunk before OpenCV sees them (lordkit.imagelimit.png_for_decoder), because libpng prints its
  errors and warnings to file descriptor 2 itself: a truncated or corrupt one is one LordkitError,
  and metadata libpng would warn about (a 200 MB text chunk, a broken ICC profile) is dropped.
- a FIFO, device or socket: LordkitError, never waited on.
- more than MAX_PIXELS pixels (read from the header where the format allows, before decoding):
  LordkitError, the image is never decoded. Other formats meet the same limit inside OpenCV
  (OPENCV_IO_MAX_IMAGE_PIXELS, set before cv2 is imported), also before their pixels are allocated.
- larger than `max_side` on its longer side: JPEGs are decoded at 1/2, 1/4 or 1/8 size by libjpeg
  itself (cv2.IMREAD_REDUCED_*), other formats are decoded and shrunk with area averaging; the
  result is at most `max_side` on its longer side and keeps its shorter side >= `keep_min_side`.
- 16-bit or float pixels: scaled to uint8.
- an alpha channel with any transparent pixel: composited onto white (or black), with a warning;
  a fully opaque alpha channel is dropped silently.
- grey file into a colour model: replicated to RGB, with a warning; colour into a grey model:
  decoded by OpenCV's grey decoder, as `lordkit preprocess` reads it, with a warning (after
  compositing transparency: converted with OpenCV's luma weights).
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Before cv2: OpenCV's own limit for every decoder, also formats whose header is not read here
# (JPEG 2000, AVIF, ...), is set from the one MAX_PIXELS.
from lordkit.imagelimit import MAX_PIXELS, MEMORY, PIXELS, PngProblem, decode_failure, png_for_decoder

import cv2
import numpy as np

from lordkit.errors import BadInput, TooLarge

# OpenCV logs decoder complaints (a truncated PNG, a failed allocation) to stderr on its own;
# each of those cases becomes one LordkitError line here instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
ALPHA_BACKGROUNDS = ("white", "black")  # what transparent pixels are composited onto
WORK_MAX_SIDE = 4096  # photos are worked on at most this size on their longer side (50 MB as RGB)

Warn = Callable[[str], None]


@dataclass
class ImageInfo:
    """What a file's header says, read without decoding the pixels."""

    format: str  # "png", "jpeg", "bmp", "gif", "webp", "pnm", "tiff", "hdr", "pfm", "sunras"
    width: int
    height: int
    grey: bool | None = None  # None: the header does not say
    alpha: bool | None = None


@dataclass
class LoadedImage:
    """A decoded photo in the model's channel layout."""

    pixels: np.ndarray  # (H, W, 3) RGB or (H, W) grey, uint8, C-contiguous
    path: Path | None
    original_size: tuple[int, int]  # (width, height) of the file
    scale: float  # pixels / original size (< 1 when the photo was decoded or shrunk smaller)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "image"


# ---------------------------------------------------------------------------------------------
# Headers: the size of an image without decoding it, so that a huge file is refused before it
# occupies memory and a big JPEG can be decoded at reduced size.


def _png(data: bytes) -> ImageInfo | None:
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    colour_type = data[25]
    return ImageInfo("png", width, height, grey=colour_type in (0, 4), alpha=colour_type in (4, 6) or None)


def _jpeg(data: bytes | np.ndarray) -> ImageInfo | None:
    i = 2
    while i + 4 <= len(data):
        seg = bytes(data[i:i + 10])  # read segment by segment: never copy the whole file
        if seg[0] != 0xFF:
            return None
        marker = seg[1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", seg[2:4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if len(seg) < 10:
                return None
            height, width = struct.unpack(">HH", seg[5:9])
            n_components = seg[9]
            return ImageInfo("jpeg", width, height, grey=n_components == 1, alpha=False)
        if marker == 0xDA:  # start of scan before any frame header: broken file
            return None
        i += 2 + length
    return None


def _bmp(data: bytes) -> ImageInfo | None:
    if len(data) < 30:
        return None
    width, height = struct.unpack("<ii", data[18:26])
    (bits,) = struct.unpack("<H", data[28:30])
    return ImageInfo("bmp", abs(width), abs(height), alpha=bits == 32 or None)  # 8-bit BMPs may be palette colour


def _gif(data: bytes) -> ImageInfo | None:
    if len(data) < 10:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return ImageInfo("gif", width, height)


def _webp(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return ImageInfo("webp", width, height, alpha=bool(data[20] & 0x10))
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return ImageInfo("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return ImageInfo("webp", width & 0x3FFF, height & 0x3FFF, alpha=False)
    return None


def _pnm(data: bytes) -> ImageInfo | None:
    tokens: list[bytes] = []
    for line in data[2:512].splitlines():
        tokens += line.split(b"#")[0].split()
        if len(tokens) >= 2:
            break
    try:
        width, height = int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        return None
    return ImageInfo("pnm", width, height, grey=data[1:2] in (b"1", b"2", b"4", b"5"))


def _pam(data: bytes) -> ImageInfo | None:
    header = data[:512].split(b"ENDHDR")[0]
    fields = dict(re.findall(rb"^(WIDTH|HEIGHT|DEPTH)\s+(\d+)", header, re.MULTILINE))
    if b"WIDTH" not in fields or b"HEIGHT" not in fields:
        return None
    depth = int(fields.get(b"DEPTH", b"0"))
    return ImageInfo("pnm", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]), grey=depth in (1, 2) or None,
                     alpha=depth in (2, 4) or None)


def _pfm(data: bytes) -> ImageInfo | None:
    tokens = data[2:256].split()
    try:
        width, height = int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        return None
    return ImageInfo("pfm", width, height, grey=data[1:2] == b"f")


def _hdr(data: bytes) -> ImageInfo | None:
    # Radiance: header lines, an empty line, then the resolution, e.g. "-Y 480 +X 640" (rows first).
    _, sep, rest = data.partition(b"\n\n")
    found = re.match(rb"\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)", rest) if sep else None
    if found is None or found.group(2) == found.group(5):
        return None
    rows, cols = int(found.group(3)), int(found.group(6))
    return ImageInfo("hdr", cols, rows) if found.group(2) == b"Y" else ImageInfo("hdr", rows, cols)


def _sunras(data: bytes) -> ImageInfo | None:
    if len(data) < 12:
        return None
    width, height = struct.unpack(">II", data[4:12])
    return ImageInfo("sunras", width, height)


def _tiff(data: bytes | np.ndarray) -> ImageInfo | None:
    end = "<" if bytes(data[:2]) == b"II" else ">"
    try:
        (offset,) = struct.unpack(end + "I", bytes(data[4:8]))
        (n_entries,) = struct.unpack(end + "H", bytes(data[offset:offset + 2]))  # the IFD may sit after the pixels
        size: dict[int, int] = {}
        for k in range(min(n_entries, 4096)):
            entry = bytes(data[offset + 2 + 12 * k:offset + 14 + 12 * k])
            tag, kind = struct.unpack(end + "HH", entry[:4])
            if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
                short = kind == 3
                size[tag] = struct.unpack(end + ("H" if short else "I"), entry[8:10] if short else entry[8:12])[0]
    except struct.error:
        return None
    if 256 not in size or 257 not in size:
        return None
    return ImageInfo("tiff", size[256], size[257])


def sniff(data: bytes | np.ndarray) -> ImageInfo | None:
    """Format, size and (where the header says) channels of an encoded image; None if unrecognised."""
    head = bytes(data[:4096])  # every header but JPEG's lies within the first bytes
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(data)  # the frame header can follow EXIF, ICC and XMP segments of any length
    if head.startswith(b"BM"):
        return _bmp(head)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(head)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(head)
    if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2:
        return _pnm(head)
    if head.startswith(b"P7"):
        return _pam(head)
    if head[:3] in (b"PF\n", b"Pf\n", b"PF\r", b"Pf\r"):
        return _pfm(head)
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return _hdr(head)
    if head.startswith(b"\x59\xa6\x6a\x95"):
        return _sunras(head)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    return None


# ---------------------------------------------------------------------------------------------
# Decoding.

_REDUCED = {  # (grey, factor) -> imread flag; libjpeg decodes at 1/2, 1/4, 1/8 without the full image
    (False, 2): cv2.IMREAD_REDUCED_COLOR_2, (False, 4): cv2.IMREAD_REDUCED_COLOR_4,
    (False, 8): cv2.IMREAD_REDUCED_COLOR_8,
    (True, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2, (True, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (True, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def _target_scale(width: int, height: int, max_side: int | None, keep_min_side: int) -> float:
    """Scale at which to work on a width x height photo: <= 1, longer side <= max_side where possible."""
    if not max_side or max(width, height) <= max_side:
        return 1.0
    scale = max_side / max(width, height)
    # Never let the shorter side drop below what the model needs (very elongated images).
    return min(1.0, max(scale, keep_min_side / max(1, min(width, height))))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.integer):  # 16-bit PNG / TIFF
        return (img / (np.iinfo(img.dtype).max / 255.0) + 0.5).astype(np.uint8)
    return (np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # HDR / EXR


def composite_alpha(rgba: np.ndarray, background: str = "white") -> np.ndarray:
    """(H, W, 4) or (H, W, 2) uint8 with straight alpha -> (H, W, 3) or (H, W) over a white or black background."""
    colour, alpha = rgba[..., :-1].astype(np.float32), rgba[..., -1:].astype(np.float32) / 255.0
    bg = 255.0 if background == "white" else 0.0
    out = colour * alpha + bg * (1.0 - alpha)
    out = (out + 0.5).astype(np.uint8)
    return out[..., 0] if out.shape[-1] == 1 else out


def convert_channels(img: np.ndarray, channels: int, name: str, warn: Warn | None) -> np.ndarray:
    """RGB (H, W, 3) or grey (H, W) -> the model's layout, with one warning line when converting."""
    if channels == 3 and img.ndim == 2:
        if warn:
            warn(f"{name} is greyscale; converted to RGB for this colour model")
        return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_GRAY2RGB))
    if channels == 1 and img.ndim == 3:
        if warn:
            warn(f"{name} is in colour; converted to greyscale for this grey model")
        return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    return img


def load_image(path: str | Path, channels: int = 3, *, max_side: int | None = WORK_MAX_SIDE,
               keep_min_side: int = 0, alpha_background: str = "white", max_pixels: int = MAX_PIXELS,
               warn: Warn | None = None) -> LoadedImage:
    """Decode an image file for a model with `channels` (1 or 3) channels.

    max_side: work on at most this many pixels on the longer side (None: full size).
    keep_min_side: but never shrink the shorter side below this (e.g. the model's img_size).
    alpha_background: "white" or "black", what transparent pixels are composited onto.
    """
    if alpha_background not in ALPHA_BACKGROUNDS:
        raise BadInput(f"unknown alpha background {alpha_background!r}; use one of: {', '.join(ALPHA_BACKGROUNDS)}")
    path = Path(path)
    name = str(path)
    data = read_image_file(path)

    info = sniff(data)
    if info is not None:
        _check_pixels(info.width, info.height, name, max_pixels)
    if info is not None and info.format == "png":
        try:
            data = png_for_decoder(data)
        except PngProblem as e:
            raise BadInput(f"cannot decode {name}: {e}") from None

    # Choose how to decode: JPEGs at reduced size when big (and with EXIF orientation applied);
    # everything else unchanged so that an alpha channel survives. A grey model gets colour JPEGs
    # from OpenCV's grey decoder, as `lordkit preprocess` reads them.
    flag, factor = cv2.IMREAD_UNCHANGED, 1
    if info is not None and info.format == "jpeg":
        grey = bool(info.grey) or channels == 1
        flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
        scale = _target_scale(info.width, info.height, max_side, keep_min_side)
        for f in (8, 4, 2):
            if scale * f <= 1.0 + 1e-9:  # decoding at 1/f still leaves at least the size we want
                flag, factor = _REDUCED[(grey, f)], f
                break
        if grey and not info.grey and warn:
            warn(f"{name} is in colour; converted to greyscale for this grey model")
    img = _decode(data, flag, name, info, max_pixels)
    if info is None:  # a format whose header we do not read: check after decoding
        _check_pixels(img.shape[1], img.shape[0], name, max_pixels)
    original = (info.width, info.height) if info is not None else (img.shape[1] * factor, img.shape[0] * factor)
    if (img.shape[1] > img.shape[0]) != (original[0] > original[1]) and original[0] != original[1]:
        original = (original[1], original[0])  # OpenCV applied a JPEG's EXIF rotation

    # Bring it to uint8 RGB / grey.
    img = _to_uint8(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    composited = False
    if img.ndim == 3 and img.shape[2] in (2, 4):  # BGRA, or grey + alpha
        if int(img[..., -1].min()) < 255:
            if warn:
                warn(f"{name} has transparent pixels; composited onto {alpha_background}")
            img, composited = composite_alpha(img, alpha_background), True
        else:  # an opaque alpha channel carries nothing
            img = img[..., :-1] if img.shape[2] == 4 else img[..., 0]
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]  # BGR -> RGB
        if info is not None and info.grey:  # OpenCV expands grey + alpha to BGRA: keep it grey
            img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise BadInput(f"{name} has an unsupported pixel layout {img.shape}")
    if channels == 1 and img.ndim == 3 and not composited:
        # OpenCV's grey decoder (libpng's weights for PNG) rounds differently from cvtColor:
        # decode again as `lordkit preprocess` reads colour files for a grey model.
        grey_img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
        if grey_img is not None and grey_img.shape == img.shape[:2]:
            if warn:
                warn(f"{name} is in colour; converted to greyscale for this grey model")
            img = grey_img
    del data

    # Shrink to the working size (JPEGs are already close to it).
    h, w = img.shape[:2]
    scale = _target_scale(original[0], original[1], max_side, keep_min_side)
    want_w, want_h = max(1, round(original[0] * scale)), max(1, round(original[1] * scale))
    if (w, h) != (want_w, want_h) and want_w <= w and want_h <= h:
        img = cv2.resize(np.ascontiguousarray(img), (want_w, want_h), interpolation=cv2.INTER_AREA)
    img = convert_channels(np.ascontiguousarray(img), channels, name, warn)
    return LoadedImage(pixels=np.ascontiguousarray(img), path=path, original_size=original,
                       scale=img.shape[1] / original[0])


def read_image_file(path: Path) -> np.ndarray:
    """The bytes of an image file (uint8); BadInput if it is missing, unreadable, empty or not a
    regular file (a FIFO is refused, not waited on: O_NONBLOCK, then fstat)."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BadInput(f"image not found: {name}") from None
    except OSError as e:
        raise BadInput(f"cannot read {name}: {(e.strerror or str(e)).lower()}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadInput(f"{name} is a directory, not an image file")
        if not stat.S_ISREG(mode):
            raise BadInput(f"{name} is not a regular file; give an image file")
        try:
            data = np.fromfile(f, dtype=np.uint8)
        except OSError as e:
            raise BadInput(f"cannot read {name}: {(e.strerror or str(e)).lower()}") from None
    if data.size == 0:
        raise BadInput(f"{name} is empty, not an image")
    return data


def _decode(data: np.ndarray, flag: int, name: str, info: ImageInfo | None, max_pixels: int) -> np.ndarray:
    """cv2.imdecode, with each way it fails as one LordkitError line."""
    try:
        img = cv2.imdecode(data, flag)
    except cv2.error as e:
        failure = decode_failure(e)
        if failure == PIXELS:  # OpenCV's limit, for formats whose header is not read here
            raise TooLarge(f"{name} is above the {max_pixels / 1e6:.0f} MP limit; shrink it first") from None
        if failure == MEMORY:
            raise TooLarge(f"{name} is too big to decode in the memory available; shrink it first") from None
        text = str(e).strip()
        detail = text.splitlines()[-1] if text else "decoder error"
        raise BadInput(f"cannot decode {name}: {detail}") from None
    if img is None:
        if info is not None:  # the header was read, so the pixels that follow it are broken
            raise BadInput(f"cannot decode {name}: truncated or corrupt {info.format.upper()} file")
        raise BadInput(f"{name} is not an image file (no decoder accepts it)")
    return img


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadInput(f"{name} declares an empty image ({width}x{height} px)")
    if width * height > max_pixels:
        raise TooLarge(f"{name} is {width}x{height} px ({width * height / 1e6:.0f} MP), above the "
                           f"{max_pixels / 1e6:.0f} MP limit; shrink it first")


# ---------------------------------------------------------------------------------------------
# Model inputs from whole images (non-face models, or faces that are already aligned).


def check_min_size(loaded: LoadedImage, size: int) -> None:
    """A whole-image model input must not be upsampled: refuse a photo smaller than the model's input."""
    w, h = loaded.original_size
    if min(w, h) < size:
        raise BadInput(f"{loaded.name} is {w}x{h} px, smaller than this model's {size}x{size} input; "
                           f"use an image at least {size} px on its shorter side")


def to_model_input(img: np.ndarray, img_size: int, channels: int, what: str) -> np.ndarray:
    """A model input (S, S[, C]) uint8, or float in [0, 1] -> (C, S, S) float32 in [0, 1], as the
    encoders take it; BadInput naming `what` for another shape or dtype."""
    img = np.asarray(img)
    s, c = img_size, channels
    if img.ndim == 2 and c == 1:
        img = img[..., None]
    if img.shape != (s, s, c):
        raise BadInput(f"{what} is {'x'.join(map(str, img.shape))}; this model takes {s}x{s}x{c} "
                       "(Transfer.prepare makes model inputs from photos)")
    if img.dtype == np.uint8:
        x = img.astype(np.float32) / 255.0
    elif np.issubdtype(img.dtype, np.floating):
        x = img.astype(np.float32)
    else:
        raise BadInput(f"{what}: expected uint8 pixels or floats in [0, 1], got {img.dtype}")
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_uint8_image(img: np.ndarray) -> np.ndarray:
    """A model output (H, W, C) float in [0, 1] -> uint8 (H, W, C), or (H, W) for one channel."""
    out = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out[..., 0] if out.ndim == 3 and out.shape[2] == 1 else out
