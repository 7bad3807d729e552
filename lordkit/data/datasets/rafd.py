"""Radboud Faces Database (Langner et al. 2010) from its image files: class = expression.

Files are named Rafd090_01_Caucasian_female_angry_frontal.jpg: camera angle (000, 045, 090, 135,
180; 090 is frontal), identity, ethnicity, gender, expression (angry, contemptuous, disgusted,
fearful, happy, neutral, sad, surprised), gaze (frontal, left, right). Images are 681x1024 (w x h).

Crop, as in the LORD reference: the full-width 681x681 square centred vertically on the face found
by dlib's HOG detector (run on a copy shrunk to 640 px for speed), shifted to stay inside the
image; the pipeline resizes it. dlib's frontal detector rarely finds full profiles (angles 000 and
180). All five cameras of a shot fire together at the same height, so an image without a face of
its own takes the face's height from another view of the same shot (identity, expression, gaze),
tried in the order 090, 045, 135, 000, 180; if none of them has a face either, the image is
skipped and counted (DecodeError). meta.extra["n_face_from_other_view"] counts the borrowed ones.

`--opt angles=090` (comma list, default all) keeps the given cameras only: the frontal set is the
common paper-like setup. Per image the store keeps `identity` (RaFD's number), `angle` (degrees)
and `gaze` (index into meta.extra["gazes"]).

Face template: the five "eyes_nose_mouth" landmarks (lordkit.faces, from dlib's 68-point model)
of every image with its own face, in [0, 1] of its crop, averaged over the frontal (090) images
when any were read, else over all.
"""

from __future__ import annotations

import re
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lordkit.data.imageio import is_image_file, read_image
from lordkit.data.sources import Chunk, DecodeError, Loaded, Options, Source, register, sorted_class_map
from lordkit.errors import LordkitError

ANGLES = (0, 45, 90, 135, 180)
FRONTAL = 90
_FALLBACK_ORDER = (90, 45, 135, 0, 180)  # views tried for a borrowed face height, most frontal first
DETECT_MAX_SIDE = 640  # detection runs on a copy whose longer side is this many pixels
_NAME_RE = re.compile(r"^Rafd(\d{3})_(\d+)_([A-Za-z]+)_([A-Za-z]+)_([A-Za-z]+)_([A-Za-z]+)\.(?:jpe?g|png)$",
                      re.IGNORECASE)

_aligner = None
_aligner_lock = threading.Lock()


def _get_aligner():
    """One FaceAligner for all chunks: it loads the 68-point model (~100 MB) once and pools detectors."""
    global _aligner
    with _aligner_lock:
        if _aligner is None:
            from lordkit.faces import FaceAligner  # dlib is imported only when a face dataset is read

            _aligner = FaceAligner(landmarks="68", detector="hog")
        return _aligner


def _parse_angles(opts: Options) -> list[int]:
    raw = opts.get("angles", "all")
    if raw.strip().lower() == "all":
        return list(ANGLES)
    try:
        angles = sorted({int(v) for v in raw.split(",") if v.strip()})
    except ValueError:
        angles = []
    if not angles or any(a not in ANGLES for a in angles):
        raise LordkitError(f"--opt angles={raw!r}: expected a comma list of 000, 045, 090, 135, 180 or 'all'")
    return angles


def _crop_rows(center_y: float, height: int, side: int) -> int:
    """Top row of a `side`-row window centred on center_y and kept inside the image."""
    return int(min(max(round(center_y - (side - 1) / 2), 0), height - side))


def _face_center_y(img: np.ndarray) -> tuple[float, Any] | None:
    """(vertical face centre, face) of the largest face, or None."""
    faces = _get_aligner().detect(img, upsample=0, max_side=DETECT_MAX_SIDE)
    return (faces[0].center[1], faces[0]) if faces else None


def _load(path: Path, siblings: list[Path], class_id: int, per_image: dict[str, int]) -> Loaded:
    img = read_image(path)  # (H, W, 3)
    h, w = img.shape[:2]
    if h < w:
        raise DecodeError(f"expected a portrait RaFD image (681x1024, w x h), found {w}x{h}")
    side = w  # full width, a square window of rows
    found = _face_center_y(img)
    info = None
    if found is not None:
        center_y, face = found
        top = _crop_rows(center_y, h, side)
        # Landmarks in [0, 1] of this crop (pixel centres at (i + 0.5) / side) for the face template.
        pts = _get_aligner().landmarks(img, face)
        template = (pts - [0, top] + 0.5) / side
        info = {"angle": per_image["angle"], "landmarks": template.tolist()}
    else:
        for other in siblings:
            try:
                other_img = read_image(other)
            except DecodeError:
                continue
            other_found = _face_center_y(other_img) if other_img.shape[:2] == (h, w) else None
            if other_found is not None:
                top = _crop_rows(other_found[0], h, side)
                info = {"angle": per_image["angle"], "landmarks": None, "borrowed_from": other.name}
                break
        else:
            raise DecodeError("no face found (nor in another view of the same shot)")
    crop = img[top:top + side]  # (side, side, 3)
    return Loaded(images=crop, class_ids=class_id, per_image=dict(per_image), info=info)


def _finalize(infos: list[dict[str, Any]]) -> dict[str, Any]:
    own = [i for i in infos if i.get("landmarks") is not None]
    frontal = [i for i in own if i["angle"] == FRONTAL]
    used = frontal or own
    out: dict[str, Any] = {"n_face_from_other_view": sum(1 for i in infos if i.get("borrowed_from"))}
    if used:
        mean = np.mean([i["landmarks"] for i in used], axis=0)  # (5, 2)
        out["face_template"] = [[round(float(x), 6), round(float(y), 6)] for x, y in mean]
        out["face_template_from"] = f"{len(used)} {'frontal' if frontal else 'all-angle'} images"
    return out


@register("rafd", "Radboud Faces, Rafd*.jpg files (class = expression, 681 px face-centred crop; --opt angles=090)",
          is_face=True)
def open_rafd(path: Path, opts: Options) -> Source:
    angles = _parse_angles(opts)
    if not path.is_dir():
        raise LordkitError(f"RaFD folder not found: {path} (expected files like Rafd090_01_Caucasian_female_angry_frontal.jpg)")
    parsed = []
    for p in sorted(path.rglob("*"), key=lambda p: p.name):
        m = _NAME_RE.match(p.name)
        if m and is_image_file(p):
            angle, identity, _ethnicity, _gender, expression, gaze = m.groups()
            parsed.append((p, int(angle), int(identity), expression.lower(), gaze.lower()))
    if not parsed:
        raise LordkitError(f"no RaFD images in {path}: expected files like Rafd090_01_Caucasian_female_angry_frontal.jpg")
    selected = [row for row in parsed if row[1] in angles]
    if not selected:
        raise LordkitError(f"none of the {len(parsed)} RaFD images in {path} has angles={','.join(f'{a:03d}' for a in angles)}")

    # Every view of a shot, for images whose own face the detector misses.
    shots: dict[tuple[int, str, str], dict[int, Path]] = {}
    for p, angle, identity, expression, gaze in parsed:
        shots.setdefault((identity, expression, gaze), {})[angle] = p

    names, ids = sorted_class_map(row[3] for row in selected)
    gazes = sorted({row[4] for row in selected})
    chunks = []
    for p, angle, identity, expression, gaze in selected:
        views = shots[(identity, expression, gaze)]
        siblings = [views[a] for a in _FALLBACK_ORDER if a in views and a != angle]
        per_image = {"identity": identity, "angle": angle, "gaze": gazes.index(gaze)}
        chunks.append(Chunk(str(p), 1, partial(_load, p, siblings, ids[expression], per_image)))
    _get_aligner()  # load the models now: a missing model file is an error before any work starts
    return Source(
        class_names=names, channels=3, chunks=chunks, square="center", finalize=_finalize,
        extra={"angles": angles, "gazes": gazes, "face_points": "eyes_nose_mouth",
               "crop": "full width, square, centred vertically on the face"},
    )
