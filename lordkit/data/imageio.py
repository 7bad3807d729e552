"""Image file decoding shared by readers (and later the runtime): RGB uint8 out, DecodeError on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lordkit.imagelimit import (MAX_PIXELS, MEMORY, PIXELS, PNG_SIGNATURE,  # before cv2: sets OpenCV's limit
                                PngProblem, decode_failure, png_for_decoder)

import cv2
import numpy as np

from lordkit.data.sources import DecodeError

# A broken file is one DecodeError naming it; OpenCV's own log lines about it would be noise, and
# libpng's (printed to fd 2 directly) are kept away by checking PNG files first.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def read_image(path: str | Path, grey: bool = False) -> np.ndarray:
    """Decode an image file to (H, W, 3) RGB or (H, W) grey uint8; DecodeError if it does not decode."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would be waited on forever
                raise DecodeError(f"{path} is not a regular file")
            data = np.fromfile(f, dtype=np.uint8)
    except OSError as e:
        raise DecodeError(f"cannot read {path}: {e.strerror or e}") from None
    if bytes(data[:8]) == PNG_SIGNATURE:  # libpng would print its own lines about a broken PNG
        try:
            data = png_for_decoder(data)
        except PngProblem as e:
            raise DecodeError(f"{path} is not a decodable image: {e}") from None
    flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(data, flag) if data.size else None
    except cv2.error as e:  # OpenCV's pixel limit, or an allocation the image's header asked for
        failure = decode_failure(e)
        if failure == PIXELS:
            raise DecodeError(f"{path} is above the {MAX_PIXELS / 1e6:.0f} MP limit") from None
        if failure == MEMORY:
            raise DecodeError(f"{path} is too big to decode in the memory available") from None
        raise DecodeError(f"{path} is not a decodable image") from None
    if img is None:
        raise DecodeError(f"{path} is not a decodable image")
    if img.dtype != np.uint8:  # 16-bit PNG/TIFF
        img = (img / (np.iinfo(img.dtype).max / 255.0)).round().astype(np.uint8)
    return img if grey else np.ascontiguousarray(img[..., ::-1])


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
