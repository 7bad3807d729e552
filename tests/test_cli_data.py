"""CLI tests: each data command's good path and each bad input gives one line and a non-zero exit."""

import json

import cv2
import numpy as np
import pytest

from conftest import one_line_error

TINY = ["--opt", "n_x=2", "--opt", "n_y=2", "--opt", "n_scale=1", "--opt", "n_rotation=2", "--opt", "n_hue=2"]


def make_folder(root, n_per_class=60, classes=("cat", "dog", "emu"), corrupt=0):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            cv2.imwrite(str(root / c / f"{i:03d}.png"), img)
    for i in range(corrupt):
        (root / classes[0] / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def test_preprocess_synthetic_split_and_info(cli, base):
    r = cli("preprocess", "--dataset-id", "synthetic", "--data-name", "syn", "--img-size", "32", *TINY)
    assert r.exit_code == 0, r.output
    assert "wrote 80 images of 5 classes" in r.stdout
    r = cli("split-samples", "-idn", "syn", "-trdn", "tr", "-tsdn", "te", "-ts", "0.25", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "tr: 60 images; te: 20 images" in r.stdout
    r = cli("split-classes", "--input-data-name", "syn", "--train-data-name", "trc",
            "--test-data-name", "tec", "--num-test-classes", "2")
    assert r.exit_code == 0, r.output
    r = cli("data", "info", "te", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["n_imgs"] == 20 and info["n_classes"] == 5 and info["image_shape"] == [32, 32, 3]
    sheet = cv2.imread(info["contact_sheet"])
    assert sheet is not None and sheet.shape[0] > 32 * 2
    r = cli("data", "info", "tec")
    assert r.exit_code == 0 and "contact_sheet" in r.stderr + r.stdout
    r = cli("data", "list")
    assert r.exit_code == 0 and "syn\tsynthetic\t80 images" in r.stdout


def test_folder_skips_a_few_bad_images_and_counts_them(cli, base, tmp_path):
    src = make_folder(tmp_path / "imgs", n_per_class=70, corrupt=1)  # 1 of 211 < 1%
    r = cli("preprocess", "-di", "folder", "-dp", src, "-dn", "f", "--img-size", "32")
    assert r.exit_code == 0, r.output
    assert "skipped 1 image" in r.stdout
    meta = json.loads((base / "data" / "f" / "meta.json").read_text())
    assert meta["n_imgs"] == 210 and meta["extra"]["n_failed"] == 1
    assert meta["class_names"] == ["cat", "dog", "emu"]


def test_folder_with_too_many_bad_images_fails_and_leaves_nothing(cli, base, tmp_path):
    src = make_folder(tmp_path / "imgs", n_per_class=20, corrupt=3)
    r = cli("preprocess", "-di", "folder", "-dp", src, "-dn", "f", "--img-size", "32")
    assert "failed to decode" in one_line_error(r)
    assert not (base / "data" / "f").exists()
    assert not list((base / "data").glob(".*")) if (base / "data").exists() else True


@pytest.mark.parametrize("case", ["missing_path", "no_subfolders", "empty_class", "bad_name", "dotdot",
                                  "unknown_id", "no_path", "bad_opt", "bad_size", "exists",
                                  "missing_data", "bad_split", "bad_classes", "same_names"])
def test_bad_input_gives_one_line(cli, base, tmp_path, case):
    src = tmp_path / "src"
    if case == "missing_path":
        r = cli("preprocess", "-di", "folder", "-dp", tmp_path / "nope", "-dn", "x")
        assert "not found" in one_line_error(r)
    elif case == "no_subfolders":
        src.mkdir()
        cv2.imwrite(str(src / "a.png"), np.zeros((8, 8, 3), np.uint8))
        r = cli("preprocess", "-di", "folder", "-dp", src, "-dn", "x")
        assert "no class subfolders" in one_line_error(r)
    elif case == "empty_class":
        make_folder(src, n_per_class=2)
        (src / "zebra").mkdir()
        r = cli("preprocess", "-di", "folder", "-dp", src, "-dn", "x")
        assert "zebra" in one_line_error(r)
    elif case == "bad_name":
        r = cli("preprocess", "-di", "synthetic", "-dn", "a/b")
        assert "invalid data name" in one_line_error(r)
    elif case == "dotdot":
        r = cli("preprocess", "-di", "synthetic", "--data-name", "../x")
        assert "invalid data name" in one_line_error(r)
        assert not (base.parent / "x").exists()
    elif case == "unknown_id":
        r = cli("preprocess", "-di", "imagenet", "-dn", "x")
        assert "unknown dataset id" in one_line_error(r)
    elif case == "no_path":
        r = cli("preprocess", "-di", "folder", "-dn", "x")
        assert "--dataset-path" in one_line_error(r)
    elif case == "bad_opt":
        r = cli("preprocess", "-di", "synthetic", "-dn", "x", "--opt", "n_x")
        assert "KEY=VALUE" in one_line_error(r)
    elif case == "bad_size":
        r = cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "2")
        assert "--img-size" in one_line_error(r)
    elif case == "exists":
        assert cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY).exit_code == 0
        before = (base / "data" / "x" / "images.npy").read_bytes()
        r = cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY)
        assert "--force" in one_line_error(r)
        assert (base / "data" / "x" / "images.npy").read_bytes() == before
        r = cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "64", *TINY, "--force")
        assert r.exit_code == 0
    elif case == "missing_data":
        r = cli("split-samples", "-idn", "nothing", "-trdn", "a", "-tsdn", "b", "-ts", "0.2")
        assert "not found" in one_line_error(r)
        r = cli("data", "info", "nothing")
        assert "not found" in one_line_error(r)
    elif case == "bad_split":
        assert cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY).exit_code == 0
        r = cli("split-samples", "-idn", "x", "-trdn", "a", "-tsdn", "b", "-ts", "1.5")
        assert "--test-split" in one_line_error(r)
    elif case == "bad_classes":
        assert cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY).exit_code == 0
        r = cli("split-classes", "-idn", "x", "-trdn", "a", "-tsdn", "b", "-ntsi", "5")
        assert "--num-test-classes" in one_line_error(r)
    elif case == "same_names":
        assert cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY).exit_code == 0
        r = cli("split-samples", "-idn", "x", "-trdn", "x", "-tsdn", "b", "-ts", "0.5")
        assert one_line_error(r)
        assert (base / "data" / "x" / "meta.json").exists()


def test_class_whose_only_image_fails_is_dropped_not_fatal(cli, base, tmp_path):
    src = tmp_path / "imgs"
    for i in range(120):
        (src / f"c{i:03d}").mkdir(parents=True)
        cv2.imwrite(str(src / f"c{i:03d}" / "a.png"), np.full((8, 8, 3), i, np.uint8))
    (src / "c007" / "a.png").write_bytes(b"broken")
    r = cli("preprocess", "-di", "folder", "-dp", src, "-dn", "f", "--img-size", "32")
    assert r.exit_code == 0, r.output
    meta = json.loads((base / "data" / "f" / "meta.json").read_text())
    assert meta["n_classes"] == 119 and "c007" not in meta["class_names"]
    assert meta["extra"]["dropped_classes"] == ["c007"]
    ids = np.load(base / "data" / "f" / "class_ids.npy")
    assert ids.max() == 118 and meta["class_names"][ids[7]] == "c008"
