"""Image file decoding shared by readers (and later the runtime): RGB uint8 out, DecodeError on failure."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lordkit.data.sources import DecodeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def read_image(path: str | Path, grey: bool = False) -> np.ndarray:
    """Decode an image file to (H, W, 3) RGB or (H, W) grey uint8; DecodeError if it does not decode."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DecodeError(f"cannot read {path}: {e.strerror or e}") from None
    flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    img = cv2.imdecode(data, flag) if data.size else None
    if img is None:
        raise DecodeError(f"{path} is not a decodable image")
    if img.dtype != np.uint8:  # 16-bit PNG/TIFF
        img = (img / (np.iinfo(img.dtype).max / 255.0)).round().astype(np.uint8)
    return img if grey else np.ascontiguousarray(img[..., ::-1])


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
