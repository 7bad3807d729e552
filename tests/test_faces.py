"""lordkit.faces on a real photo: detection, landmarks, alignment to a template and back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from lordkit import faces
from lordkit.errors import LordkitError

SIZE = 128


def astronaut_path() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-image is not installed")
    path = Path(spec.origin).parent / "data" / "astronaut.png"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    bgr = cv2.imread(str(astronaut_path()))
    return bgr[..., ::-1]  # RGB, deliberately a non-contiguous view


@pytest.fixture(scope="module")
def aligner() -> faces.FaceAligner:
    try:
        return faces.FaceAligner()
    except LordkitError as e:
        pytest.skip(str(e))


def test_find_model_file():
    for name in ("shape68", "shape5", "cnn", "shape_predictor_68_face_landmarks.dat"):
        try:
            path = faces.find_model_file(name)
        except LordkitError:
            pytest.skip("face-recognition-models is not installed")
        assert path.is_file() and path.suffix == ".dat"
    with pytest.raises(LordkitError, match="face-recognition-models"):
        faces.find_model_file("no_such_model.dat")


def test_detects_one_face_with_plausible_landmarks(aligner, astronaut):
    assert not astronaut.flags["C_CONTIGUOUS"]  # dlib would miss the face if handed this view as is
    found = aligner.find(astronaut)
    assert len(found) == 1
    face, pts = found[0]
    assert 150 < face.center[0] < 290 and 60 < face.center[1] < 190 and 60 < face.width < 140
    left_eye, right_eye, nose, mouth_left, mouth_right = pts
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    eye_y, mouth_y = (left_eye[1] + right_eye[1]) / 2, (mouth_left[1] + mouth_right[1]) / 2
    assert eye_y < nose[1] < mouth_y
    assert left_eye[0] < nose[0] < right_eye[0]
    assert all(face.left <= x <= face.right and face.top <= y <= face.bottom + 10 for x, y in pts)


def test_detect_on_shrunk_copy_maps_boxes_back(aligner, astronaut):
    big = cv2.resize(np.ascontiguousarray(astronaut), (1024, 1024))
    small_face = aligner.detect(astronaut)[0]
    big_face = aligner.detect(big, max_side=512)[0]
    assert abs(big_face.center[0] - 2 * small_face.center[0]) < 4
    assert abs(big_face.width - 2 * small_face.width) < 4


def test_align_puts_landmarks_on_template(aligner, astronaut):
    face, pts = aligner.find(astronaut)[0]
    # A template these landmarks fit exactly: their own layout, rotated 8 degrees and rescaled.
    m = cv2.getRotationMatrix2D((float(pts[:, 0].mean()), float(pts[:, 1].mean())), 8.0, 1.0)
    rotated = faces.transform_points(pts, m)
    rotated = (rotated - rotated.mean(0)) / np.ptp(rotated[:, 0]) * 0.36 + [0.5, 0.55]
    template = rotated.tolist()
    aligned = aligner.align(astronaut, pts, template, SIZE, face)
    assert aligned.crop.shape == (SIZE, SIZE, 3) and aligned.crop.dtype == np.uint8
    want = faces.template_to_pixels(template, SIZE)
    assert np.abs(faces.transform_points(pts, aligned.matrix) - want).max() < 1e-6

    # Landmarks found again on the crop itself land on the template.
    again = aligner.find(aligned.crop, upsample=1)
    assert again, "no face found on the aligned crop"
    eyes_err = np.linalg.norm(again[0][1][:2] - want[:2], axis=1)
    assert eyes_err.max() < 2.0, eyes_err
    assert np.linalg.norm(again[0][1] - want, axis=1).max() < 4.0

    # The inverse takes the template back onto the photo's landmarks.
    back = faces.transform_points(want, faces.invert_transform(aligned.matrix))
    assert np.abs(back - pts).max() < 1e-6


def test_paste_back_restores_the_photo(aligner, astronaut):
    face, pts = aligner.find(astronaut)[0]
    template = [[0.35, 0.40], [0.65, 0.40], [0.5, 0.56], [0.38, 0.70], [0.62, 0.70]]
    aligned = aligner.align(astronaut, pts, template, 256, face)
    pasted = faces.paste_back(np.ascontiguousarray(astronaut), aligned.crop, aligned.matrix)
    assert pasted.shape == astronaut.shape and pasted.dtype == np.uint8
    box = (slice(int(face.top), int(face.bottom)), slice(int(face.left), int(face.right)))
    diff = np.abs(pasted[box].astype(int) - astronaut[box].astype(int))
    assert diff.mean() < 6, diff.mean()
    # An edited crop (all white) changes the face region and leaves far-away pixels untouched.
    white = faces.paste_back(np.ascontiguousarray(astronaut), np.full_like(aligned.crop, 255), aligned.matrix)
    cx, cy = (int(round(c)) for c in face.center)
    assert white[cy, cx].min() > 240
    assert np.array_equal(white[-20:, -20:], astronaut[-20:, -20:])


def test_no_face_gives_empty_list(aligner):
    assert aligner.find(np.zeros((200, 300, 3), np.uint8)) == []
    assert aligner.find(np.full((200, 300), 128, np.uint8), upsample=1) == []
    assert aligner.detect(np.zeros((5, 5, 3), np.uint8)) == []
    assert aligner.align_faces(np.zeros((64, 64, 3), np.uint8), [[0.3, 0.4], [0.7, 0.4]], 32) == []


def test_grey_and_rgba_inputs(aligner, astronaut):
    grey = cv2.cvtColor(np.ascontiguousarray(astronaut), cv2.COLOR_RGB2GRAY)
    assert len(aligner.detect(grey)) == 1
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    assert len(aligner.detect(rgba)) == 1
    with pytest.raises(ValueError):
        aligner.detect(astronaut.astype(np.float32))


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.deg2rad(23.0), 0.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = faces.similarity_transform(src, dst)
    assert np.allclose(m[:, :2], scale * rot) and np.allclose(m[:, 2], shift)
    # Template coordinates and crop pixels convert both ways; pixel centres sit at (i + 0.5) / size.
    assert np.allclose(faces.template_to_pixels([[0.5 / 4, 3.5 / 4]], 4), [[0, 3]])
    assert np.allclose(faces.pixels_to_template(faces.template_to_pixels(src / 100, 64), 64), src / 100)


def test_reduce_68_to_5_order():
    pts = np.zeros((68, 2))
    pts[36:42] = [10, 20]
    pts[42:48] = [30, 20]
    pts[30] = [20, 30]
    pts[48], pts[54] = [12, 40], [28, 40]
    assert np.array_equal(faces.reduce_68_to_5(pts), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
