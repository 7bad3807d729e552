"""Readers of CelebA, KTH and RaFD on tiny copies written in the publishers' layouts and formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from lordkit.data.imageio import read_image
from lordkit.data.preprocess import normalise_image, preprocess
from lordkit.data.sources import Options, get_reader
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError

IMG_SIZE = 32


def run(dataset_id: str, path: Path, out: Path, **opts: str) -> Dataset:
    preprocess(dataset_id, path, out, img_size=IMG_SIZE, opts=Options(opts), show_progress=False)
    return Dataset(out)


def write_rgb(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]))


def assert_plausible_template(template) -> None:
    pts = np.asarray(template)
    assert pts.shape == (5, 2) and (pts >= 0).all() and (pts <= 1).all()
    left_eye, right_eye, nose, mouth_left, mouth_right = pts
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_readers_are_registered_as_faces():
    assert get_reader("celeba").is_face and get_reader("rafd").is_face
    assert not get_reader("kth").is_face
    for dataset_id in ("celeba", "kth", "rafd"):
        assert get_reader(dataset_id).summary


# ---------------------------------------------------------------- CelebA

CELEBA_IDS = [2880, 2937, 10, 2880, 10177, 2937, 10, 10177]  # identity of 000001.jpg, 000002.jpg, ...
CELEBA_LANDMARKS = [  # lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x ... rightmouth_y
    [69, 109, 106, 113, 77, 142, 73, 152, 108, 154],
    [69, 110, 107, 112, 81, 135, 70, 151, 108, 153],
    [76, 112, 104, 106, 108, 128, 74, 156, 98, 158],
    [72, 113, 108, 108, 101, 138, 71, 155, 101, 151],
    [66, 114, 112, 112, 86, 119, 71, 147, 104, 150],
    [71, 111, 106, 110, 94, 131, 74, 154, 102, 153],
    [70, 112, 108, 111, 85, 135, 72, 152, 104, 152],
    [71, 110, 105, 111, 87, 133, 74, 153, 104, 153],
]


def celeba_image(i: int) -> np.ndarray:
    """A 178x218 RGB picture whose colour depends on the identity and whose pattern on the image."""
    rng = np.random.default_rng(i)
    img = np.zeros((218, 178, 3), np.uint8)
    img[:] = (CELEBA_IDS[i] * 37 % 256, CELEBA_IDS[i] * 91 % 256, 128)
    cv2.circle(img, (89, 109), 30 + 3 * i, tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    return img


def write_celeba(root: Path, images: str = "Img/img_align_celeba", suffix: str = ".jpg") -> Path:
    for i in range(len(CELEBA_IDS)):
        write_rgb(root / images / f"{i + 1:06d}{suffix}", celeba_image(i))
    anno = root / "Anno"
    anno.mkdir(parents=True)
    (anno / "identity_CelebA.txt").write_text("".join(f"{i + 1:06d}.jpg {ident}\n" for i, ident in enumerate(CELEBA_IDS)))
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
    rows = "".join(f"{i + 1:06d}.jpg" + "".join(f"{v:>5d}" for v in row) + "\n" for i, row in enumerate(CELEBA_LANDMARKS))
    (anno / "list_landmarks_align_celeba.txt").write_text(f"{len(CELEBA_LANDMARKS)}\n{header}{rows}")
    return root


def celeba_expected(root: Path, i: int, images: str = "Img/img_align_celeba", suffix: str = ".jpg") -> np.ndarray:
    img = read_image(root / images / f"{i + 1:06d}{suffix}")
    return normalise_image(img[45:173, 25:153], IMG_SIZE, 3)  # LORD's centred 128 px crop


def test_celeba(tmp_path):
    root = write_celeba(tmp_path / "celeba")
    ds = run("celeba", root, tmp_path / "out")
    assert ds.meta.class_names == ["00010", "02880", "02937", "10177"]  # numeric order
    assert ds.images.shape == (8, IMG_SIZE, IMG_SIZE, 3)
    assert [ds.meta.class_names[c] for c in ds.class_ids] == [f"{i:05d}" for i in CELEBA_IDS]
    assert (ds.content_ids == -1).all()
    assert ds.per_image["image_number"].tolist() == list(range(1, 9))
    for i in (0, 5):
        assert np.array_equal(ds.images[i], celeba_expected(root, i))
    want = (np.mean(CELEBA_LANDMARKS, 0).reshape(5, 2) - [25, 45] + 0.5) / 128
    assert np.allclose(ds.meta.face_template, want, atol=1e-5)
    assert_plausible_template(ds.meta.face_template)
    assert ds.meta.extra["face_points"] == "eyes_nose_mouth"


def test_celeba_png_release_and_max_images(tmp_path):
    images = "Img/img_align_celeba_png.7z/img_align_celeba_png"
    root = write_celeba(tmp_path / "celeba", images=images, suffix=".png")
    ds = run("celeba", root, tmp_path / "out", max_images="3")
    assert len(ds) == 3 and ds.meta.class_names == ["00010", "02880", "02937"]
    assert np.array_equal(ds.images[2], celeba_expected(root, 2, images, ".png"))
    want = (np.mean(CELEBA_LANDMARKS[:3], 0).reshape(5, 2) - [25, 45] + 0.5) / 128
    assert np.allclose(ds.meta.face_template, want, atol=1e-5)


def test_celeba_skips_and_counts_a_corrupt_or_missing_image(tmp_path):
    root = write_celeba(tmp_path / "celeba")
    (root / "Img/img_align_celeba/000004.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = run("celeba", root, tmp_path / "out")
    assert len(ds) == 7 and ds.meta.extra["n_failed"] == 1
    assert "000004.jpg" in ds.meta.extra["failed"][0]
    assert ds.per_image["image_number"].tolist() == [1, 2, 3, 5, 6, 7, 8]

    (root / "Img/img_align_celeba/000004.jpg").unlink()
    ds = run("celeba", root, tmp_path / "out2")
    assert len(ds) == 7 and ds.meta.extra["n_failed"] == 1 and "missing" in ds.meta.extra["failed"][0]

    # Two bad images in eight is far above the 1% the pipeline tolerates.
    (root / "Img/img_align_celeba/000005.jpg").write_bytes(b"")
    with pytest.raises(LordkitError, match="failed to decode"):
        run("celeba", root, tmp_path / "out3")


def test_celeba_bad_input(tmp_path):
    with pytest.raises(LordkitError, match="not found"):
        run("celeba", tmp_path / "nowhere", tmp_path / "out")
    root = write_celeba(tmp_path / "celeba")
    with pytest.raises(LordkitError, match="unknown --opt"):
        run("celeba", root, tmp_path / "out", max_image="3")
    with pytest.raises(LordkitError, match="max_images"):
        run("celeba", root, tmp_path / "out", max_images="zero")

    (root / "Anno/list_landmarks_align_celeba.txt").unlink()
    with pytest.raises(LordkitError, match="list_landmarks_align_celeba.txt"):
        run("celeba", root, tmp_path / "out")
    (root / "Anno/identity_CelebA.txt").unlink()
    with pytest.raises(LordkitError, match="identity_CelebA.txt"):
        run("celeba", root, tmp_path / "out")

    empty = tmp_path / "empty"
    (empty / "Anno").mkdir(parents=True)
    with pytest.raises(LordkitError, match="img_align_celeba"):
        run("celeba", empty, tmp_path / "out")

    root = write_celeba(tmp_path / "celeba2")
    (root / "Anno/identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg not-a-number\n")
    with pytest.raises(LordkitError, match=r"identity_CelebA.txt:2"):
        run("celeba", root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- KTH

N_FRAMES = 5


def write_avi(path: Path, level: int, n_frames: int = N_FRAMES) -> Path:
    """A 160x120 grey-ish MJPG video whose frame t has mean brightness level + 30 t."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    assert writer.isOpened()
    for t in range(n_frames):
        frame = np.full((120, 160, 3), level + 30 * t, np.uint8)
        cv2.rectangle(frame, (60 + 5 * t, 40), (100 + 5 * t, 80), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def write_kth(root: Path) -> Path:
    write_avi(root / "person01_handwaving_d4_uncomp.avi", 20)
    write_avi(root / "handwaving" / "person02_handwaving_d4_uncomp.avi", 40)
    write_avi(root / "handwaving" / "person03_handwaving_d1_uncomp.avi", 60)
    write_avi(root / "boxing" / "person01_boxing_d4_uncomp.avi", 10)
    (root / "00sequences.txt").write_text("person01_handwaving_d4\t\tframes\t1-5\n")
    return root


def test_kth_default_is_handwaving_d4(tmp_path):
    root = write_kth(tmp_path / "kth")
    ds = run("kth", root, tmp_path / "out")
    assert ds.meta.channels == 1 and ds.images.shape == (2 * N_FRAMES, IMG_SIZE, IMG_SIZE, 1)
    assert ds.meta.class_names == ["person01", "person02"]
    assert ds.class_ids.tolist() == [0] * N_FRAMES + [1] * N_FRAMES
    assert (ds.content_ids == -1).all()
    assert ds.per_image["frame_index"].tolist() == list(range(N_FRAMES)) * 2
    assert ds.per_image["video_index"].tolist() == [0] * N_FRAMES + [1] * N_FRAMES
    assert ds.meta.extra["videos"] == ["person01_handwaving_d4_uncomp.avi",
                                       "handwaving/person02_handwaving_d4_uncomp.avi"]
    # Frame t of person01's video was drawn at brightness 20 + 30 t (the white box adds a little).
    corners = ds.images[:N_FRAMES, 0, 0, 0].astype(int)
    assert np.all(np.abs(corners - (20 + 30 * np.arange(N_FRAMES))) < 8), corners


def test_kth_options(tmp_path):
    root = write_kth(tmp_path / "kth")
    ds = run("kth", root, tmp_path / "out", actions="all", scenarios="all", frame_step="2")
    assert ds.meta.class_names == ["person01", "person02", "person03"]
    assert len(ds) == 4 * 3  # frames 0, 2, 4 of four videos
    assert ds.per_image["frame_index"].tolist() == [0, 2, 4] * 4
    assert len(ds.meta.extra["videos"]) == 4 and ds.meta.extra["frame_step"] == 2
    ds = run("kth", root, tmp_path / "out2", actions="boxing,handwaving", scenarios="d1")
    assert ds.meta.class_names == ["person03"] and len(ds) == N_FRAMES


def test_kth_skips_and_counts_a_bad_video(tmp_path):
    root = write_kth(tmp_path / "kth")
    for person in range(4, 12):  # more videos so that one bad one stays under the 1% rule's floor
        write_avi(root / f"person{person:02d}_handwaving_d4_uncomp.avi", 10 * person)
    # person05's d1 video is broken; its d4 one keeps the class populated.
    (root / "person05_handwaving_d1_uncomp.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage")
    ds = run("kth", root, tmp_path / "out", scenarios="all")
    assert ds.meta.extra["n_failed"] == 1 and "person05_handwaving_d1" in ds.meta.extra["failed"][0]
    assert len(ds) == 11 * N_FRAMES and len(ds.meta.class_names) == 11
    videos = ds.meta.extra["videos"]
    assert len(videos) == 12 and "person05_handwaving_d1_uncomp.avi" in videos
    # Video indices still point at the listed files: the bad video's index is simply absent.
    bad = videos.index("person05_handwaving_d1_uncomp.avi")
    assert bad not in ds.per_image["video_index"].tolist()
    assert sorted(set(ds.per_image["video_index"].tolist())) == [i for i in range(12) if i != bad]


def test_kth_bad_input(tmp_path):
    with pytest.raises(LordkitError, match="not found"):
        run("kth", tmp_path / "nowhere", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    with pytest.raises(LordkitError, match="no KTH videos"):
        run("kth", empty, tmp_path / "out")
    root = write_kth(tmp_path / "kth")
    with pytest.raises(LordkitError, match="actions"):
        run("kth", root, tmp_path / "out", actions="dancing")
    with pytest.raises(LordkitError, match="scenarios=d2"):
        run("kth", root, tmp_path / "out", scenarios="d2")
    with pytest.raises(LordkitError, match="frame_step"):
        run("kth", root, tmp_path / "out", frame_step="0")


# ---------------------------------------------------------------- RaFD

RAFD_W, RAFD_H = 681, 1024


@pytest.fixture(scope="module")
def astronaut_head() -> np.ndarray:
    spec = importlib.util.find_spec("skimage")
    path = Path(spec.origin).parent / "data" / "astronaut.png" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("scikit-image's astronaut.png is not available")
    img = cv2.imread(str(path))[..., ::-1]
    head = img[0:340, 50:390]  # the face is at rows ~76-167 of the 512 px photo
    return cv2.resize(np.ascontiguousarray(head), (RAFD_W, RAFD_W), interpolation=cv2.INTER_CUBIC)


def rafd_picture(head: np.ndarray | None, offset: int) -> np.ndarray:
    """A 681x1024 (w x h) portrait: grey canvas with the head pasted `offset` rows down."""
    img = np.full((RAFD_H, RAFD_W, 3), 90, np.uint8)
    if head is not None:
        img[offset:offset + RAFD_W] = head
    return img


RAFD_FILES = {  # name -> row offset of the head, or None for a picture without a face
    "Rafd090_01_Caucasian_female_angry_frontal.jpg": 150,
    "Rafd000_01_Caucasian_female_angry_frontal.jpg": None,  # a "profile": borrows the 090 view's height
    "Rafd090_01_Caucasian_female_happy_left.jpg": 250,
    "Rafd090_02_Moroccan_male_happy_frontal.jpg": 300,
    "Rafd090_03_Kid_male_angry_right.jpg": None,  # no face in any view of this shot: skipped
}


def write_rafd(root: Path, head: np.ndarray) -> Path:
    for name, offset in RAFD_FILES.items():
        write_rgb(root / name, rafd_picture(None if offset is None else head, offset or 0))
    (root / "readme.txt").write_text("not an image")
    return root


def test_rafd(tmp_path, astronaut_head):
    root = write_rafd(tmp_path / "rafd", astronaut_head)
    ds = run("rafd", root, tmp_path / "out")
    assert ds.meta.class_names == ["angry", "happy"]
    assert ds.images.shape == (4, IMG_SIZE, IMG_SIZE, 3) and (ds.content_ids == -1).all()
    assert ds.meta.extra["n_failed"] == 1 and "Rafd090_03" in ds.meta.extra["failed"][0]
    assert ds.meta.extra["n_face_from_other_view"] == 1
    # Files are read sorted by name: 000_01 angry, 090_01 angry, 090_01 happy, 090_02 happy.
    assert ds.per_image["angle"].tolist() == [0, 90, 90, 90]
    assert ds.per_image["identity"].tolist() == [1, 1, 1, 2]
    assert [ds.meta.class_names[c] for c in ds.class_ids] == ["angry", "angry", "happy", "happy"]
    assert [ds.meta.extra["gazes"][g] for g in ds.per_image["gaze"]] == ["frontal", "frontal", "left", "frontal"]

    # Each crop is the full-width square centred on the face: the head pasted `offset` rows down
    # has its face centre ~245 rows into the head, so the window starts ~offset - 95.
    for i, name in ((1, "Rafd090_01_Caucasian_female_angry_frontal.jpg"),
                    (3, "Rafd090_02_Moroccan_male_happy_frontal.jpg")):
        img = read_image(root / name)
        near = RAFD_FILES[name] - 95
        tops = [t for t in range(max(0, near - 40), min(RAFD_H - RAFD_W, near + 40) + 1)
                if np.array_equal(normalise_image(img[t:t + RAFD_W], IMG_SIZE, 3), ds.images[i])]
        assert tops, f"{name}: crop is not a full-width window within 40 rows of {near}"
    # The profile stand-in was cut at the rows of its frontal view: a plain grey square here.
    assert np.abs(ds.images[0].astype(int) - 90).max() <= 1

    template = ds.meta.face_template
    assert_plausible_template(template)
    assert ds.meta.extra["face_points"] == "eyes_nose_mouth"
    # The face sits mid-crop: eyes in the upper half, centred horizontally.
    eyes = np.asarray(template)[:2]
    assert 0.3 < eyes[:, 1].mean() < 0.5 and abs(eyes[:, 0].mean() - 0.5) < 0.1


def test_rafd_angles_option(tmp_path, astronaut_head):
    root = write_rafd(tmp_path / "rafd", astronaut_head)
    ds = run("rafd", root, tmp_path / "out", angles="090")
    assert len(ds) == 3 and set(ds.per_image["angle"].tolist()) == {90}
    assert ds.meta.extra["n_face_from_other_view"] == 0 and ds.meta.extra["angles"] == [90]
    # Only the profile stand-in is left, and it borrows its crop height from the unselected 090 view.
    ds = run("rafd", root, tmp_path / "out2", angles="0")
    assert len(ds) == 1 and ds.meta.face_template is None and ds.meta.extra["n_face_from_other_view"] == 1


def test_rafd_bad_input(tmp_path, astronaut_head):
    with pytest.raises(LordkitError, match="not found"):
        run("rafd", tmp_path / "nowhere", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_rgb(empty / "portrait.jpg", rafd_picture(astronaut_head, 100))
    with pytest.raises(LordkitError, match="no RaFD images"):
        run("rafd", empty, tmp_path / "out")
    root = write_rafd(tmp_path / "rafd", astronaut_head)
    with pytest.raises(LordkitError, match="angles"):
        run("rafd", root, tmp_path / "out", angles="091")
    with pytest.raises(LordkitError, match="angles=045"):
        run("rafd", root, tmp_path / "out", angles="45")

    # No face anywhere: nothing can be decoded, and the run says so.
    blank = tmp_path / "blank"
    write_rgb(blank / "Rafd090_05_Caucasian_female_sad_frontal.jpg", rafd_picture(None, 0))
    with pytest.raises(LordkitError, match="no face found"):
        run("rafd", blank, tmp_path / "out")
    assert not (tmp_path / "out").exists()
