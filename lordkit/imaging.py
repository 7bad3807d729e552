"""The one square crop and resize that makes a model input, shared by preprocessing and the runtime.

Training images (lordkit.data.preprocess) and whole-image inputs at inference (lordkit.runtime)
both come from `square_resize`, so the two cannot drift apart. numpy and OpenCV only: the
torch-free runtime imports it.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_square(img: np.ndarray, mode: str = "center") -> np.ndarray:
    """The centred largest square of an image ("center"), or the image unchanged ("stretch": the
    resize then changes its aspect)."""
    h, w = img.shape[:2]
    if h == w or mode == "stretch":
        return img
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2  # an odd margin leaves the extra pixel at the bottom / right
    return img[top:top + s, left:left + s]


def square_resize(img: np.ndarray, img_size: int, channels: int, square: str = "center") -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8 -> (img_size, img_size, channels) uint8, C-contiguous.

    Squared by `to_square`, then resized with area averaging when shrinking and bicubic when
    enlarging (either side); the channel conversion, where needed, comes after the resize.
    """
    img = to_square(img, square)
    h, w = img.shape[:2]
    if (h, w) != (img_size, img_size):
        interp = cv2.INTER_AREA if (h > img_size or w > img_size) else cv2.INTER_CUBIC
        img = cv2.resize(np.ascontiguousarray(img), (img_size, img_size), interpolation=interp)
    if channels == 1 and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    elif channels == 3 and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(img.reshape(img_size, img_size, channels))
