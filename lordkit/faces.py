"""Face detection, landmarks and similarity alignment with dlib, shared by dataset readers and the runtime.

Imports only numpy, cv2 and dlib (never torch): the torch-free runtime aligns photos with it.

Conventions
-----------
- Images are uint8 RGB (H, W, 3) or grey (H, W); they are handed to dlib as C-contiguous copies,
  since dlib's detector silently misses faces on non-contiguous views (e.g. `img[..., ::-1]`).
- Landmarks are pixel coordinates (x, y) of the image they were found in, pixel centres at
  integers (OpenCV's and dlib's convention).
- A face template lists (x, y) in [0, 1] of a square crop: (0, 0) is the crop's outer top-left
  corner and (1, 1) its outer bottom-right corner, so pixel (row i, col j) of an S-pixel crop has
  its centre at ((j + 0.5) / S, (i + 0.5) / S). This makes a template independent of crop size.
- The default landmark set, "eyes_nose_mouth", is the five points CelebA annotates, in its order:
  left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner, where left
  and right are as seen in the image (the subject's right eye is the "left eye"). It is computed
  from dlib's 68-point model: eye centres = mean of points 36-41 and 42-47, nose tip = point 30,
  mouth corners = points 48 and 54. dlib's own 5-point model ("dlib5": outer and inner corner of
  the image-right eye, outer and inner corner of the image-left eye, base of the nose) is smaller
  and faster but has no mouth, so its points cannot be matched against an "eyes_nose_mouth"
  template; `FaceAligner(landmarks="5")` returns them as they are.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import dlib
import numpy as np

from lordkit.errors import LordkitError

MODEL_FILES = {
    "shape68": "shape_predictor_68_face_landmarks.dat",
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
}
LANDMARK_SETS = {
    "eyes_nose_mouth": ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right"),
    "dlib5": ("right_eye_outer", "right_eye_inner", "left_eye_outer", "left_eye_inner", "nose_base"),
}
_MODELS_PACKAGE = "face_recognition_models"


def find_model_file(name: str) -> Path:
    """Path of a dlib model file shipped by the `face-recognition-models` package.

    `name` is a key of MODEL_FILES ("shape68", "shape5", "cnn") or a file name such as
    "shape_predictor_68_face_landmarks.dat". The package is located without importing it (its
    __init__ needs pkg_resources, which recent setuptools no longer provides).
    """
    filename = MODEL_FILES.get(name, name)
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(_MODELS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        roots = list(spec.submodule_search_locations or [])
        if spec.origin:
            roots.append(str(Path(spec.origin).parent))
        candidates += [Path(root) / "models" / filename for root in roots]
    try:
        dist = importlib.metadata.distribution("face-recognition-models")
        candidates += [Path(str(dist.locate_file(f))) for f in (dist.files or []) if f.name == filename]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise LordkitError(f"dlib model file {filename} not found: install face-recognition-models "
                       "(pip install face-recognition-models) or pass the model file's path")


def _resolve_model(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".dat" and (path.is_absolute() or path.parent != Path(".")):
        if not path.is_file():
            raise LordkitError(f"dlib model file not found: {path}")
        return path
    return find_model_file(str(name_or_path))


def as_dlib_image(img: np.ndarray) -> np.ndarray:
    """A C-contiguous uint8 grey (H, W) or RGB (H, W, 3) array, as dlib needs."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"expected a grey (H, W) or RGB (H, W, 3) image, got shape {img.shape}")
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------------------------------------
# Geometry: similarity transforms between image landmarks and a template.


def similarity_transform(src: np.ndarray, dst: np.ndarray,
                         weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking `src` points onto `dst`.

    Umeyama's closed form (no reflection); returns the (2, 3) matrix M with dst ~ M @ [x, y, 1].
    weights: optional non-negative weight per point (None: all equal), for fits that should favour
    the more reliable points.
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError(f"need two equal sets of at least 2 points, got {len(src)} and {len(dst)}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != len(src) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need {len(src)} non-negative weights with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = float(w @ (src_c ** 2).sum(1))
    if var_src <= 1e-12:
        raise ValueError("source points all coincide")
    cov = (dst_c * w[:, None]).T @ src_c  # (2, 2)
    u, s, vt = np.linalg.svd(cov)
    d = np.diag([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d)) / var_src
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_dst - scale * rot @ mu_src
    return m


def template_to_pixels(template: np.ndarray | Sequence[Sequence[float]], size: int) -> np.ndarray:
    """Template points in [0, 1] of a crop -> pixel coordinates (centres at integers) of a size-px crop."""
    return np.asarray(template, np.float64).reshape(-1, 2) * size - 0.5


def pixels_to_template(points: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates in a size-px crop -> template coordinates in [0, 1] (inverse of template_to_pixels)."""
    return (np.asarray(points, np.float64).reshape(-1, 2) + 0.5) / size


def alignment_transform(landmarks: np.ndarray, template: np.ndarray | Sequence[Sequence[float]],
                        size: int, weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """(2, 3) matrix taking image pixel coordinates into a size-px crop where `landmarks` meet `template`.

    weights: optional weight per landmark for the least-squares fit (None: all equal).
    """
    dst = template_to_pixels(template, size)
    if len(dst) != len(np.asarray(landmarks).reshape(-1, 2)):
        raise ValueError(f"template has {len(dst)} points, landmarks have {len(np.asarray(landmarks).reshape(-1, 2))}")
    return similarity_transform(landmarks, dst, weights)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (K, 2) points."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return points @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]


def invert_transform(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix: crop pixel coordinates back to image pixel coordinates."""
    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def _to3(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])


def warp_face(img: np.ndarray, m: np.ndarray, size: int, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Warp `img` by M (image -> crop pixels) into a size x size crop.

    When M shrinks the face by more than 2x the image is first reduced with area averaging, since
    bilinear sampling alone would alias.
    """
    img = np.ascontiguousarray(img)
    m = np.asarray(m, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        h, w = img.shape[:2]
        new_w, new_h = max(1, round(w * scale * 2)), max(1, round(h * scale * 2))
        fx, fy = new_w / w, new_h / h
        # Reduced pixel x' sits at original (x' + 0.5) / fx - 0.5 (cv2.resize's centre alignment).
        reduced_to_orig = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
        m = (_to3(m) @ reduced_to_orig)[:2]
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)


def paste_back(image: np.ndarray, crop: np.ndarray, m: np.ndarray, feather_px: float | None = None) -> np.ndarray:
    """Put an (edited) aligned crop back into the image it was cut from; returns a new image.

    `m` is the image -> crop matrix used to cut it. The seam is feathered over `feather_px` image
    pixels (default: 1/16 of the face's size in the image).
    """
    h, w = image.shape[:2]
    inv = invert_transform(m)
    back = cv2.warpAffine(np.ascontiguousarray(crop), inv, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    mask = np.ones(crop.shape[:2], np.float32)
    mask = cv2.warpAffine(mask, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0.0)
    if feather_px is None:
        feather_px = crop.shape[0] / 16 / float(np.sqrt(abs(np.linalg.det(np.asarray(m)[:, :2]))))
    radius = int(round(feather_px))
    if radius > 0:
        # Shrink the mask first so the blur fades to zero inside the pasted area, not beyond it.
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.erode(mask, kernel)
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=radius / 2)
    if image.ndim == 3:
        mask = mask[..., None]
    out = image.astype(np.float32) * (1 - mask) + back.astype(np.float32) * mask
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def reduce_68_to_5(points68: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks -> the "eyes_nose_mouth" five: eye centres, nose tip, mouth corners."""
    p = np.asarray(points68, np.float64).reshape(68, 2)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


# ---------------------------------------------------------------------------------------------
# Detection and landmarks.


@dataclass(frozen=True)
class Face:
    """A detected face: box edges in pixels of the image searched (right/bottom exclusive)."""

    left: float
    top: float
    right: float
    bottom: float
    score: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) in pixel coordinates (centres at integers)."""
        return (self.left + self.right) / 2 - 0.5, (self.top + self.bottom) / 2 - 0.5

    def scaled(self, factor: float) -> "Face":
        return Face(self.left * factor, self.top * factor, self.right * factor, self.bottom * factor, self.score)

    def to_dlib(self) -> dlib.rectangle:
        return dlib.rectangle(int(round(self.left)), int(round(self.top)),
                              int(round(self.right)) - 1, int(round(self.bottom)) - 1)


class _Pool:
    """Instances of a non-thread-safe dlib object, lent to one thread at a time and reused.

    Building dlib's HOG detector takes about a second while copying one takes milliseconds, so
    extra instances are copies of a prototype that is never lent out.
    """

    def __init__(self, factory: Callable[[], object]):
        self.factory = factory
        self.prototype: object | None = None
        self.free: list[object] = []
        self.lock = threading.Lock()

    def _new(self) -> object:
        with self.lock:  # the prototype is only ever touched under the lock
            if self.prototype is None:
                self.prototype = self.factory()
            try:
                return copy.deepcopy(self.prototype)
            except Exception:  # a dlib type without pickle support: build another
                return self.factory()

    @contextmanager
    def borrow(self) -> Iterator[object]:
        with self.lock:
            obj = self.free.pop() if self.free else None
        if obj is None:
            obj = self._new()
        try:
            yield obj
        finally:
            with self.lock:
                self.free.append(obj)


# dlib's object detectors must not be used by two threads at once: pools, shared by every
# FaceAligner, lend one per concurrent call.
_DETECTOR_POOLS: dict[str, _Pool] = {}
# A shape predictor needs no locking (dlib documents it as safe to share); one per model file.
_PREDICTORS: dict[str, dlib.shape_predictor] = {}
_LOCK = threading.Lock()


def _detector_pool(kind: str, model: Path | None) -> _Pool:
    key = kind if model is None else f"{kind}:{model}"
    with _LOCK:
        if key not in _DETECTOR_POOLS:
            if kind == "hog":
                factory = dlib.get_frontal_face_detector
            else:
                factory = lambda: dlib.cnn_face_detection_model_v1(str(model))  # noqa: E731
            _DETECTOR_POOLS[key] = _Pool(factory)
        return _DETECTOR_POOLS[key]


def _shape_predictor(path: Path) -> dlib.shape_predictor:
    key = str(path)
    with _LOCK:  # held while loading so that threads starting together read the file once
        if key not in _PREDICTORS:
            try:
                _PREDICTORS[key] = dlib.shape_predictor(key)
            except RuntimeError as e:
                raise LordkitError(f"{path} is not a dlib shape predictor model: {e}") from None
        return _PREDICTORS[key]


@dataclass
class AlignedFace:
    crop: np.ndarray  # (size, size[, 3]) uint8
    matrix: np.ndarray  # (2, 3) image pixels -> crop pixels; invert_transform(matrix) goes back
    landmarks: np.ndarray  # (K, 2) the landmarks it was aligned by, in image pixels
    face: Face | None = None


class FaceAligner:
    """Find faces, their landmarks, and cut crops aligned to a template.

    landmarks: "68" (default: reduced to the "eyes_nose_mouth" five), "5" (dlib's own 5-point
        model, "dlib5" points), or the path of a shape predictor .dat file with 68 or 5 points.
    detector: "hog" (dlib's frontal HOG+SVM detector, fast on CPU) or "cnn" (dlib's MMOD CNN,
        more robust to pose and blur, slow without a GPU); cnn_model overrides its file.
    upsample: times the image is doubled before HOG/CNN search. The default 0 finds faces of
        about 80 px and more; each doubling finds faces half as small, costs about 4x, and brings
        more false detections.
    """

    def __init__(self, landmarks: str | Path = "68", detector: str = "hog", cnn_model: str | Path | None = None,
                 upsample: int = 0):
        if detector not in ("hog", "cnn"):
            raise LordkitError(f"unknown face detector {detector!r}; use 'hog' or 'cnn'")
        if str(landmarks) in ("68", "5"):
            predictor_path = find_model_file("shape68" if str(landmarks) == "68" else "shape5")
        else:
            predictor_path = _resolve_model(landmarks)
        self.predictor = _shape_predictor(predictor_path)
        # The Python binding does not expose num_parts: run it once on a blank patch to count them.
        n_parts = self.predictor(np.zeros((32, 32), np.uint8), dlib.rectangle(0, 0, 31, 31)).num_parts
        if n_parts not in (68, 5):
            raise LordkitError(f"{predictor_path}: expected a 68- or 5-point shape predictor, found {n_parts} points")
        self.n_parts = n_parts
        self.landmark_set = "eyes_nose_mouth" if n_parts == 68 else "dlib5"
        self.detector_kind = detector
        cnn_path = _resolve_model(cnn_model or "cnn") if detector == "cnn" else None
        self._pool = _detector_pool(detector, cnn_path)
        self.upsample = int(upsample)

    @property
    def point_names(self) -> tuple[str, ...]:
        return LANDMARK_SETS[self.landmark_set]

    def detect(self, img: np.ndarray, upsample: int | None = None, threshold: float = 0.0,
               max_side: int | None = None) -> list[Face]:
        """Faces in `img`, largest first; [] when there is none.

        threshold: added to the detector's decision threshold (HOG: negative finds more, less
            certain faces; CNN: minimum confidence). max_side: search a copy shrunk so that its
            longer side is at most this many pixels (much faster on large photos); boxes are
            returned in `img`'s own pixels.
        """
        img = as_dlib_image(img)
        upsample = self.upsample if upsample is None else int(upsample)
        factor = 1.0
        h, w = img.shape[:2]
        if max_side is not None and max(h, w) > max_side:
            factor = max_side / max(h, w)
            img = np.ascontiguousarray(cv2.resize(img, (max(1, round(w * factor)), max(1, round(h * factor))),
                                                  interpolation=cv2.INTER_AREA))
        if min(img.shape[:2]) < 16:
            return []
        faces: list[Face] = []
        with self._pool.borrow() as det:
            if self.detector_kind == "hog":
                rects, scores, _ = det.run(img, upsample, threshold)
                found = list(zip(rects, scores))
            else:
                found = [(d.rect, d.confidence) for d in det(img, upsample) if d.confidence >= threshold]
        for rect, score in found:
            face = Face(float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1),
                        float(score))
            faces.append(face.scaled(1 / factor) if factor != 1.0 else face)
        return sorted(faces, key=lambda f: (-f.area, -f.score))

    def landmark_points(self, img: np.ndarray, face: Face) -> np.ndarray:
        """All points of the shape predictor (68 or 5) for `face`, (n_parts, 2) image pixels."""
        shape = self.predictor(as_dlib_image(img), face.to_dlib())
        return np.array([(p.x, p.y) for p in shape.parts()], np.float64)

    def landmarks(self, img: np.ndarray, face: Face) -> np.ndarray:
        """The five points of this aligner's landmark set for `face`, (5, 2) image pixels."""
        points = self.landmark_points(img, face)
        return reduce_68_to_5(points) if self.n_parts == 68 else points

    def find(self, img: np.ndarray, upsample: int | None = None, threshold: float = 0.0,
             max_side: int | None = None) -> list[tuple[Face, np.ndarray]]:
        """(face, (5, 2) landmarks) for each face in `img`, largest first; [] when there is none."""
        img = as_dlib_image(img)
        return [(f, self.landmarks(img, f)) for f in self.detect(img, upsample, threshold, max_side)]

    def align(self, img: np.ndarray, landmarks: np.ndarray, template: np.ndarray | Sequence[Sequence[float]],
              size: int, face: Face | None = None) -> AlignedFace:
        """Cut a size x size crop in which `landmarks` sit as close as a similarity allows to `template`."""
        m = alignment_transform(landmarks, template, size)
        return AlignedFace(crop=warp_face(img, m, size), matrix=m, landmarks=np.asarray(landmarks, np.float64),
                           face=face)

    def align_faces(self, img: np.ndarray, template: np.ndarray | Sequence[Sequence[float]], size: int,
                    max_faces: int | None = 1, **detect_kwargs) -> list[AlignedFace]:
        """Detect, find landmarks and align, largest face first; [] when no face is found."""
        found = self.find(img, **detect_kwargs)[:max_faces]
        return [self.align(img, pts, template, size, face) for face, pts in found]
