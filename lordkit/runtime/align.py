"""Turn photos into model inputs: find and align faces for face models, centre-crop everything else.

Face models (an export whose manifest has a `face_template`) get, for each photo:
1. the photo decoded at a bounded working size (lordkit.runtime.images.load_image);
2. faces found with dlib's HOG detector (or the CNN one) on a copy at most `detect_side` px on its
   longer side, upsampled 1-2x when the photo is small so that faces of ~20-40 px are found; when
   the shrunk copy shows no face the full working image is searched once more. Detections scoring
   below MIN_SCORE are dropped when a stronger one exists (HOG also fires on badges and patterns);
   faces are taken largest first;
3. landmarks from dlib's 68-point model (or the 5-point one, or a .dat file given by path);
4. a similarity transform onto the template at img_size, fitted by least squares with the eyes
   weighted `eye_weight` times (CelebA's own crops are aligned by the eyes, eye landmarks are the
   most reliable, and mouth corners move with expression); with 5-point landmarks and an
   "eyes_nose_mouth" template the transform is fitted to the two eye centres alone;
5. the crop cut with lordkit.faces.warp_face. A face smaller than the crop is upsampled (bilinear);
   that is allowed, with a warning when it is enlarged more than 2x.

Everything else (non-face models, or align=False for crops that are already aligned) is centre-cropped
to a square and resized to img_size by lordkit.imaging.square_resize, the function `lordkit preprocess`
makes the training images with; such an image must be at least img_size on its shorter side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lordkit.errors import BadInput, Hint, LordkitError, NoFace

# isort: off
# images first: it sets OpenCV's pixel limit, which OpenCV reads once when cv2 is first imported.
from lordkit.runtime.images import (ALPHA_BACKGROUNDS, WORK_MAX_SIDE, LoadedImage, Warn, check_min_size,
                                    convert_channels, load_image)
from lordkit.imaging import square_resize
# isort: on

DETECT_SIDE = 1280  # faces are searched on a copy this big at most (HOG cost grows with pixels)
MIN_SCORE = 0.3  # weaker HOG detections (badges, patterned cloth) are dropped unless nothing else is found
EYE_WEIGHT = 4.0  # weight of each eye against 1 for nose and mouth corners in the alignment fit
MAX_UPSAMPLE_QUIET = 2.0  # faces enlarged more than this get a warning
DLIB5_FROM_68 = [45, 42, 36, 39, 33]  # dlib's 5-point layout taken from the 68 points
DETECTORS = ("hog", "cnn")
LANDMARKS = ("68", "5")  # or a shape predictor file, by path


@dataclass
class Prepared:
    """One model input cut from a photo (or given as it is), with what paste-back needs."""

    image: np.ndarray  # (S, S, C) uint8: the aligned crop or the centre square
    label: str  # the file's stem; "<stem>-face<k>" for the k-th face when all faces were asked for
    source: Path | None  # the file it came from
    photo: np.ndarray | None = None  # the working photo (model channels) a face was cut from
    matrix: np.ndarray | None = None  # (2, 3) photo pixels -> crop pixels
    face_index: int = 0  # 0 = the largest face
    photo_scale: float = 1.0  # photo pixels per pixel of the file (< 1 when a big photo was shrunk)

    @property
    def aligned(self) -> bool:
        return self.matrix is not None


def _as_uint8(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise BadInput(f"{what}: expected uint8 pixels or floats in [0, 1], got {img.dtype}")


class Preparer:
    """Photos -> model inputs for one export (see the module docstring for what happens to faces)."""

    def __init__(self, img_size: int, channels: int, face_template: Sequence[Sequence[float]] | None = None,
                 face_points: str | None = None, *, align: bool = True, landmarks: str | Path = "68",
                 detector: str = "hog", eye_weight: float = EYE_WEIGHT, detect_side: int = DETECT_SIDE,
                 max_side: int = WORK_MAX_SIDE, alpha_background: str = "white", warn: Warn | None = None):
        # Names are checked here, also for models that never align: a typo fails before any work.
        if detector not in DETECTORS:
            raise LordkitError(f"unknown detector {detector!r}; use one of: {', '.join(DETECTORS)}")
        if str(landmarks) not in LANDMARKS and not str(landmarks).endswith(".dat"):
            raise LordkitError(f"unknown landmarks {str(landmarks)!r}; use one of: {', '.join(LANDMARKS)}, "
                               "or the path of a dlib shape predictor .dat file")
        if alpha_background not in ALPHA_BACKGROUNDS:
            raise LordkitError(f"unknown alpha background {alpha_background!r}; "
                               f"use one of: {', '.join(ALPHA_BACKGROUNDS)}")
        self.img_size, self.channels = int(img_size), int(channels)
        self.template = np.asarray(face_template, np.float64) if face_template is not None else None
        self.face_points = face_points or ("eyes_nose_mouth" if self.template is not None else None)
        self.align = bool(align) and self.template is not None  # non-face models never align
        self.landmarks, self.detector = landmarks, detector
        self.eye_weight, self.detect_side, self.max_side = float(eye_weight), int(detect_side), int(max_side)
        self.alpha_background = alpha_background
        self.warn = warn
        self._aligner = None
        if self.align and (self.template.ndim != 2 or self.template.shape[1] != 2):
            raise LordkitError(f"the export's face template has shape {self.template.shape}, expected (K, 2)")
        if self.align and self.face_points not in ("eyes_nose_mouth", "dlib5"):
            raise LordkitError(f"the export's face template uses {self.face_points!r} points; the runtime "
                               "locates 'eyes_nose_mouth' and 'dlib5' only (pass align=False for aligned crops)")

    @property
    def aligner(self):
        """The dlib models, loaded on first use (a second or so for the HOG detector and predictor)."""
        if self._aligner is None:
            from lordkit.faces import FaceAligner

            self._aligner = FaceAligner(landmarks=self.landmarks, detector=self.detector)
            if self.face_points == "dlib5" and self._aligner.n_parts == 5 and len(self.template) != 5:
                raise LordkitError(f"the export's dlib5 template has {len(self.template)} points, expected 5")
        return self._aligner

    # -----------------------------------------------------------------------------------------

    def load(self, source: str | Path | np.ndarray, name: str | None = None) -> LoadedImage:
        """A file (decoded with bounded memory) or an in-memory RGB / grey array, in the model's channels."""
        if isinstance(source, (str, Path)):
            keep = 0 if self.align else self.img_size
            return load_image(source, self.channels, max_side=self.max_side, keep_min_side=keep,
                              alpha_background=self.alpha_background, warn=self.warn)
        name = name or "image"
        img = _as_uint8(source, name)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        if img.ndim == 3 and img.shape[2] == 4:
            from lordkit.runtime.images import composite_alpha

            if int(img[..., 3].min()) < 255 and self.warn:
                self.warn(f"{name} has transparent pixels; composited onto {self.alpha_background}")
            img = composite_alpha(img, self.alpha_background)  # channel order passes through: RGBA -> RGB
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise BadInput(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
        img = convert_channels(np.ascontiguousarray(img), self.channels, name, self.warn)
        return LoadedImage(pixels=img, path=None, original_size=(img.shape[1], img.shape[0]), scale=1.0)

    def __call__(self, source: str | Path | np.ndarray, *, all_faces: bool = False, label: str | None = None,
                 align: bool | None = None) -> list[Prepared]:
        """Model inputs from one photo: the largest face (or all faces, largest first), or the centre square.

        Raises LordkitError when a face model finds no face (unless align=False).
        """
        path = Path(source) if isinstance(source, (str, Path)) else None
        label = label or (path.stem if path is not None else "image")
        loaded = self.load(source, name=label)
        if not (self.align if align is None else bool(align) and self.template is not None):
            check_min_size(loaded, self.img_size)
            image = square_resize(loaded.pixels, self.img_size, self.channels)  # as preprocessing squares images
            return [Prepared(image=image, label=label, source=path, photo_scale=loaded.scale)]
        return self._faces(loaded, label, path, all_faces)

    def _model_layout(self, img: np.ndarray) -> np.ndarray:
        return img.reshape(self.img_size, self.img_size, self.channels)

    # -----------------------------------------------------------------------------------------

    def _detect(self, photo: np.ndarray):
        aligner = self.aligner
        h, w = photo.shape[:2]
        side = min(max(h, w), self.detect_side)
        upsample = 0 if side >= 800 else 1 if side >= 300 else 2  # HOG's smallest face is about 80 px
        faces = aligner.detect(photo, upsample=upsample, max_side=self.detect_side)
        if not faces and max(h, w) > self.detect_side:  # small faces in a big photo vanish in the shrunk copy
            faces = aligner.detect(photo, upsample=0)
        confident = [f for f in faces if f.score >= MIN_SCORE]
        return confident or sorted(faces, key=lambda f: -f.score)[:1]

    def _points(self, photo: np.ndarray, face) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(image points, template points, weights) for the alignment fit of one face."""
        from lordkit.faces import reduce_68_to_5

        pts = self.aligner.landmark_points(photo, face)
        n_parts = len(pts)
        if self.face_points == "dlib5":
            src = pts if n_parts == 5 else pts[DLIB5_FROM_68]
            return src, self.template, None
        if n_parts == 68:
            weights = np.array([self.eye_weight, self.eye_weight] + [1.0] * (len(self.template) - 2))
            return reduce_68_to_5(pts), self.template, weights
        # dlib5: corners 0-1 belong to the image-right eye, 2-3 to the image-left eye; no mouth.
        eyes = np.stack([pts[2:4].mean(0), pts[0:2].mean(0)])
        return eyes, self.template[:2], None

    def _faces(self, loaded: LoadedImage, label: str, path: Path | None, all_faces: bool) -> list[Prepared]:
        from lordkit.faces import alignment_transform, warp_face

        photo = loaded.pixels
        faces = self._detect(photo)
        if not faces:
            raise NoFace(f"no face found in {loaded.name}", hint=Hint.NO_ALIGN)
        out = []
        for k, face in enumerate(faces if all_faces else faces[:1]):
            src, dst, weights = self._points(photo, face)
            m = alignment_transform(src, dst, self.img_size, weights)
            crop = warp_face(photo, m, self.img_size)
            upsample = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
            if upsample > MAX_UPSAMPLE_QUIET and self.warn:
                self.warn(f"the face in {loaded.name} is small ({face.width:.0f} px); enlarged {upsample:.1f}x "
                          f"to the model's {self.img_size} px crop")
            out.append(Prepared(image=self._model_layout(crop), label=f"{label}-face{k + 1}" if all_faces else label,
                                source=path, photo=photo, matrix=m, face_index=k, photo_scale=loaded.scale))
        return out


def paste_back(prepared: Prepared, generated: np.ndarray, photo: np.ndarray | None = None,
               feather_px: float | None = None) -> np.ndarray:
    """Put a generated crop (uint8, or float in [0, 1]) back into the photo its face was cut from.

    photo: paste into this image instead of prepared.photo (to paste several faces of one photo,
    pass the result of the previous paste). Pixels farther than the feather width outside the
    crop's footprint are left unchanged, bit for bit.
    """
    from lordkit.faces import paste_back as _paste

    if prepared.matrix is None or prepared.photo is None:
        raise BadInput(f"{prepared.label} was not aligned from a photo, so there is nowhere to paste it back")
    base = prepared.photo if photo is None else photo
    crop = _as_uint8(generated, prepared.label)
    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[..., 0]
    if crop.ndim != base.ndim:
        raise BadInput(f"{prepared.label}: crop has {crop.ndim} dims, the photo {base.ndim}")
    return _paste(base, crop, prepared.matrix, feather_px)
