"""Face-alignment latency: how long lordkit.runtime takes to prepare a photo for a face model
(detect, landmarks, similarity fit, warp), in total and step by step."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lordkit.errors import LordkitError

from .timing import percentile_ms, time_calls

# The CelebA-like landmark template used to time alignment when the export is not a face model.
DEFAULT_FACE_TEMPLATE = [[0.37, 0.45], [0.63, 0.45], [0.5, 0.6], [0.4, 0.75], [0.6, 0.75]]


def find_astronaut() -> Path | None:
    """scikit-image's astronaut.png (a dev dependency), located without importing scikit-image."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("skimage")
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = Path(root) / "data" / "astronaut.png"
            if path.is_file():
                return path
    return None


def bench_alignment(image: str | Path | None, img_size: int, template: Sequence[Sequence[float]] | None = None,
                    *, warmup: int = 2, iters: int = 20, max_time_s: float = 20.0) -> dict[str, Any]:
    """Latency per image of face alignment, the way lordkit.runtime prepares a photo for a face model.

    total: lordkit.runtime.Preparer on the decoded photo (detect, landmarks, similarity fit, warp);
    and the steps apart with lordkit.faces: HOG detection (with the runtime's upsampling rule),
    68-point landmarks, and the warp. Returns {"status": "missing", "reason": ...} when dlib, its
    model files or the image are not there.
    """
    path = Path(image) if image is not None else find_astronaut()
    if path is None:
        return {"status": "missing", "reason": "no image: scikit-image's astronaut.png is not installed; pass --align-image"}
    if not path.is_file():
        return {"status": "missing", "reason": f"image not found: {path}"}
    try:
        import dlib  # noqa: F401

        from lordkit.faces import FaceAligner, alignment_transform, reduce_68_to_5, warp_face
        from lordkit.runtime.align import DETECT_SIDE, EYE_WEIGHT, Preparer
        from lordkit.runtime.images import load_image

        aligner = FaceAligner(landmarks="68", detector="hog")  # dlib's models are cached: Preparer shares them
    except ImportError as e:
        return {"status": "missing", "reason": f"{e.name or 'dlib'} is not installed"}
    except LordkitError as e:
        return {"status": "missing", "reason": str(e)}
    template = np.asarray(template if template is not None else DEFAULT_FACE_TEMPLATE, np.float64)
    photo = load_image(path, 3).pixels
    preparer = Preparer(img_size, 3, template, "eyes_nose_mouth")
    h, w = photo.shape[:2]
    side = min(max(h, w), DETECT_SIDE)
    upsample = 0 if side >= 800 else 1 if side >= 300 else 2  # lordkit.runtime.align's rule for small photos
    faces = aligner.detect(photo, upsample=upsample, max_side=DETECT_SIDE)
    if not faces:
        return {"status": "missing", "reason": f"no face found in {path.name}"}
    face = faces[0]
    points = aligner.landmark_points(photo, face)
    m = alignment_transform(reduce_68_to_5(points), template, img_size, [EYE_WEIGHT] * 2 + [1.0] * 3)
    steps = {
        "total": lambda: preparer(photo),
        "detect": lambda: aligner.detect(photo, upsample=upsample, max_side=DETECT_SIDE),
        "landmarks": lambda: aligner.landmark_points(photo, face),
        "warp": lambda: warp_face(photo, m, img_size),
    }
    out: dict[str, Any] = {"status": "ok", "image": path.name, "image_size": [w, h], "crop_size": img_size,
                           "n_faces": len(faces), "face_px": round(face.width), "detect_upsample": upsample,
                           "detector": "hog", "landmarks": "68", "latency_ms": {}}
    for name, fn in steps.items():
        times, _ = time_calls(fn, lambda: None, warmup=warmup, iters=iters, max_time_s=max_time_s)
        out["latency_ms"][name] = percentile_ms(times)
        out.setdefault("n_iters", {})[name] = len(times)
    out["img_per_sec"] = 1e3 / out["latency_ms"]["total"]["p50"]
    return out
