"""Faces through a video: detect now and then, follow with landmarks in between, smooth the alignment.

- Detection (dlib's HOG, as for photos) runs on the first frame, then every `detect_every` frames,
  whenever a face is lost, and on every frame while no face is followed.
- Between detections each face's landmarks come from dlib's shape predictor run on the box the face
  had in the previous frame (a millisecond or two, against tens to hundreds for a detection); the
  box then follows the face's new alignment transform.
- A face is lost when its box jumps (IoU with the previous box under LOST_IOU) or when its crop no
  longer looks like the crop at its last detection (normalised cross-correlation of a 32 px grey
  crop under LOST_NCC): the frame is searched again at once.
- With all_faces, detections are matched to the followed faces by box overlap (IoU >= MATCH_IOU,
  greedy, best pairs first), so every face keeps its identity (track id) across frames.
- Smoothing: the alignment transform of each face is filtered over time with a One Euro filter
  (lordkit.runtime.video.oneeuro) on four numbers in image pixels: the crop's centre (x, y), its
  side, and its rotation as the arc its corners travel (angle x side / 2). The filter's speed is
  measured in crop sides per second, so the same settings hold at every resolution. A still face
  gives a still crop; a moving one is followed with little lag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from lordkit.runtime.video.oneeuro import OneEuroFilter

DETECT_EVERY = 10  # frames between detections while faces are followed
MIN_CUTOFF_HZ = 0.5  # One Euro: cutoff for a still face (jitter removed)
BETA = 20.0  # One Euro: cutoff rise per crop side per second of motion (lag removed)
D_CUTOFF_HZ = 1.0  # One Euro: cutoff of the speed estimate
MATCH_IOU = 0.3  # a detection continues a followed face when their boxes overlap this much
LOST_IOU = 0.5  # a box that overlaps its previous position less than this has jumped: lost
LOST_NCC = 0.5  # a crop that correlates less than this with the one at the last detection: lost
REANCHOR_IOU = 0.6  # a detection that overlaps a followed box less than this replaces the box
MAX_MISSED = 2  # detections in a row that may miss a followed face before it is dropped
_CHECK_SIZE = 32  # side of the grey crop compared for loss


@dataclass
class TrackedFace:
    """One face in one frame."""

    track_id: int  # the same number for the same face in every frame (1, 2, ...)
    matrix: np.ndarray  # (2, 3) image -> crop pixels, smoothed (what the crop is cut and pasted with)
    raw_matrix: np.ndarray  # (2, 3) the transform fitted to this frame's landmarks alone


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (left, top, right, bottom)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def matrix_params(m: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) image -> crop transform -> (centre x, centre y, side, angle x side / 2), image pixels."""
    m = np.asarray(m, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    angle = float(np.arctan2(m[1, 0], m[0, 0]))
    c = (size - 1) / 2.0  # the crop's centre in crop pixels
    inv = cv2.invertAffineTransform(m)
    cx, cy = inv[:, :2] @ [c, c] + inv[:, 2]
    side = size / scale
    return np.array([cx, cy, side, angle * side / 2.0])


def params_matrix(p: np.ndarray, size: int) -> np.ndarray:
    """Inverse of matrix_params."""
    cx, cy, side, arc = (float(v) for v in p)
    side = max(side, 1e-6)
    angle, scale = arc * 2.0 / side, size / side
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    c = (size - 1) / 2.0
    m = np.zeros((2, 3))
    m[:, :2] = rot
    m[:, 2] = np.array([c, c]) - rot @ [cx, cy]
    return m


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # (left, top, right, bottom) in the last frame
    rel_centre: np.ndarray  # the box's centre in crop pixels, fixed when the track is (re)anchored
    rel_side: float  # the box's side in crop pixels
    reference: np.ndarray  # (32, 32) float32 grey crop at the last detection, zero mean, unit norm
    filter: OneEuroFilter
    missed: int = 0
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))


class FaceTracker:
    """Follow faces through the frames of one video for a face Preparer (lordkit.runtime.align).

    Call it once per frame, in order: `tracker(image, time_s)` -> list of TrackedFace (the largest
    face only, unless all_faces). `n_detections` counts the full-frame searches.
    """

    def __init__(self, preparer, *, detect_every: int = DETECT_EVERY, all_faces: bool = False, smooth: bool = True,
                 min_cutoff_hz: float = MIN_CUTOFF_HZ, beta: float = BETA, d_cutoff_hz: float = D_CUTOFF_HZ):
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.preparer = preparer
        self.size = preparer.img_size
        self.detect_every, self.all_faces, self.smooth = int(detect_every), bool(all_faces), bool(smooth)
        self.filter_args = (float(min_cutoff_hz), float(beta), float(d_cutoff_hz))
        self.tracks: list[_Track] = []
        self.n_detections = 0
        self._next_id = 1
        self._since_detection = 0

    # -- geometry ---------------------------------------------------------------------------------

    def _fit(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Alignment transform from the landmarks found in `box`."""
        from lordkit.faces import Face, alignment_transform

        face = Face(float(box[0]), float(box[1]), float(box[2]), float(box[3]), 1.0)
        src, dst, weights = self.preparer._points(image, face)
        return alignment_transform(src, dst, self.size, weights)

    def _box(self, track: _Track, m: np.ndarray) -> np.ndarray:
        """The track's box under transform m: its fixed place in the crop mapped back into the image."""
        inv = cv2.invertAffineTransform(m)
        cx, cy = inv[:, :2] @ track.rel_centre + inv[:, 2]
        half = track.rel_side / float(np.sqrt(abs(np.linalg.det(m[:, :2])))) / 2.0
        return np.array([cx - half, cy - half, cx + half, cy + half])

    def _check_crop(self, image: np.ndarray, m: np.ndarray) -> np.ndarray:
        small = cv2.warpAffine(image, m * (_CHECK_SIZE / self.size), (_CHECK_SIZE, _CHECK_SIZE),
                               flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        grey = (cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if small.ndim == 3 else small).astype(np.float32)
        grey -= grey.mean()
        return grey / (float(np.linalg.norm(grey)) + 1e-6)

    def _anchor(self, track: _Track, image: np.ndarray, box: np.ndarray, m: np.ndarray) -> None:
        """Tie the track's box to transform m (at a detection)."""
        c = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
        track.rel_centre = m[:, :2] @ c + m[:, 2]
        track.rel_side = float(box[2] - box[0]) * float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        track.reference = self._check_crop(image, m)
        track.box = np.asarray(box, np.float64)

    def _new_track(self, image: np.ndarray, box: np.ndarray) -> _Track | None:
        try:
            m = self._fit(image, box)
        except ValueError:  # landmarks that collapse to a point: no usable face
            return None
        track = _Track(self._next_id, box, np.zeros(2), 0.0, np.zeros((_CHECK_SIZE, _CHECK_SIZE), np.float32),
                       OneEuroFilter(*self.filter_args), matrix=m)
        self._next_id += 1
        self._anchor(track, image, box, m)
        return track

    # -- per frame --------------------------------------------------------------------------------

    def _follow(self, track: _Track, image: np.ndarray) -> bool:
        """Landmarks on the previous box; False when the face is lost."""
        try:
            m = self._fit(image, track.box)
        except ValueError:
            return False
        box = self._box(track, m)
        if iou(box, track.box) < LOST_IOU:
            return False
        if float((self._check_crop(image, m) * track.reference).sum()) < LOST_NCC:
            return False
        track.box, track.matrix = box, m
        return True

    def _detect(self, image: np.ndarray) -> None:
        self.n_detections += 1
        self._since_detection = 0
        faces = self.preparer._detect(image)  # confident faces, largest first
        boxes = [np.array([f.left, f.top, f.right, f.bottom]) for f in faces]
        if not self.all_faces:
            boxes = boxes[:1]
        pairs = sorted(((iou(t.box, b), i, k) for i, t in enumerate(self.tracks) for k, b in enumerate(boxes)),
                       reverse=True)
        used_tracks, used_boxes = set(), set()
        for overlap, i, k in pairs:
            if overlap < MATCH_IOU or i in used_tracks or k in used_boxes:
                continue
            used_tracks.add(i)
            used_boxes.add(k)
            track = self.tracks[i]
            track.missed = 0
            if overlap < REANCHOR_IOU:  # the followed box drifted from the face: start again from the detection
                try:
                    m = self._fit(image, boxes[k])
                except ValueError:
                    continue
                self._anchor(track, image, boxes[k], m)
                track.matrix = m
            else:
                track.reference = self._check_crop(image, track.matrix)
        kept = []
        for i, track in enumerate(self.tracks):
            if i not in used_tracks:
                track.missed += 1
                if track.missed > MAX_MISSED or (not self.all_faces and used_boxes):
                    continue
            kept.append(track)
        for k, box in enumerate(boxes):
            if k not in used_boxes and (self.all_faces or not kept):
                track = self._new_track(image, box)
                if track is not None:
                    kept.append(track)
        self.tracks = kept

    def __call__(self, image: np.ndarray, time_s: float) -> list[TrackedFace]:
        """The faces in this frame (image: (H, W, 3) uint8 RGB, or grey), with their transforms."""
        self._since_detection += 1
        if not self.tracks:
            self._detect(image)
        else:
            lost = [t for t in self.tracks if not self._follow(t, image)]
            if lost or self._since_detection >= self.detect_every:
                self.tracks = [t for t in self.tracks if t not in lost]
                first_new = self._next_id
                self._detect(image)
                # A new track over a lost face's box is that face found again: it keeps its id and filter.
                for old in lost:
                    new = [t for t in self.tracks if t.track_id >= first_new and iou(t.box, old.box) >= MATCH_IOU]
                    if new:
                        best = max(new, key=lambda t: iou(t.box, old.box))
                        best.track_id, best.filter = old.track_id, old.filter
        out = []
        for t in sorted(self.tracks, key=lambda t: t.track_id):
            m = t.matrix
            if self.smooth:
                p = matrix_params(m, self.size)
                m = params_matrix(t.filter(p, time_s, scale=max(p[2], 1.0)), self.size)
            out.append(TrackedFace(t.track_id, m, t.matrix))
        return out
