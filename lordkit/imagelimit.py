"""The one pixel limit of every image decoded by lordkit, and how OpenCV reports hitting a limit.

Import this module before cv2: OpenCV reads its decoder limit (OPENCV_IO_MAX_IMAGE_PIXELS) once,
when it is imported, so a process that imported cv2 earlier keeps OpenCV's default (2^30 pixels).
The runtime (lordkit.runtime.images) also reads the limit from file headers before decoding.
"""

from __future__ import annotations

import os

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
