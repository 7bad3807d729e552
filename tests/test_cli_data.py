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


def _flat_folder(src):
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.zeros((8, 8, 3), np.uint8))


def _empty_class(src):
    make_folder(src, n_per_class=2)
    (src / "zebra").mkdir()


SETUPS = {  # what exists before the command runs: src is <tmp>/src, the dataset is <base>/data/x
    "nothing": lambda src, cli: None,
    "flat folder": lambda src, cli: _flat_folder(src),
    "empty class": lambda src, cli: _empty_class(src),
    "3 of 63 broken": lambda src, cli: make_folder(src, n_per_class=20, corrupt=3),
    "dataset x": lambda src, cli: cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY),
}
SPLIT = ["-trdn", "a", "-tsdn", "b"]
BAD_INPUTS = [  # (setup, arguments, expected error line); {tmp}, {src} and {base} are filled in
    ("nothing", ["preprocess", "-di", "folder", "-dp", "{tmp}/nope", "-dn", "x"],
     "error: dataset path not found: {tmp}/nope"),
    ("flat folder", ["preprocess", "-di", "folder", "-dp", "{src}", "-dn", "x"],
     "error: {src} has no class subfolders"),
    ("empty class", ["preprocess", "-di", "folder", "-dp", "{src}", "-dn", "x"],
     "error: class folder {src}/zebra has no images"),
    ("3 of 63 broken", ["preprocess", "-di", "folder", "-dp", "{src}", "-dn", "x", "--img-size", "32"],
     "images failed to decode (more than 1%); first: {src}/cat/bad0.jpg"),
    ("nothing", ["preprocess", "-di", "synthetic", "-dn", "a/b"], "error: invalid data name 'a/b'"),
    ("nothing", ["preprocess", "-di", "synthetic", "--data-name", "../x"], "error: invalid data name '../x'"),
    ("nothing", ["preprocess", "-di", "imagenet", "-dn", "x"], "error: unknown dataset id 'imagenet'"),
    ("nothing", ["preprocess", "-di", "folder", "-dn", "x"], "error: dataset folder needs --dataset-path"),
    ("nothing", ["preprocess", "-di", "synthetic", "-dn", "x", "--opt", "n_x"],
     "error: --opt expects KEY=VALUE, got 'n_x'"),
    ("nothing", ["preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "2"],
     "error: --img-size 2 is out of range (8..1024)"),
    ("dataset x", ["preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY],
     "error: dataset {base}/data/x already exists; pass --force to replace it"),
    ("nothing", ["split-samples", "-idn", "nothing", *SPLIT, "-ts", "0.2"],
     "error: dataset not found: {base}/data/nothing"),
    ("nothing", ["data", "info", "nothing"], "error: dataset not found: {base}/data/nothing"),
    ("dataset x", ["split-samples", "-idn", "x", *SPLIT, "-ts", "1.5"],
     "error: --test-split must be a fraction between 0 and 1, got 1.5"),
    ("dataset x", ["split-classes", "-idn", "x", *SPLIT, "-ntsi", "5"],
     "error: --num-test-classes must be between 1 and 4"),
    ("dataset x", ["split-samples", "-idn", "x", "-trdn", "x", "-tsdn", "b", "-ts", "0.5"],
     "error: a split output cannot replace its input dataset {base}/data/x"),
]


def tree(root) -> dict:
    """Every path under root, with the bytes of each file."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("setup, args, expected", BAD_INPUTS,
                         ids=[f"{i}-{args[0]}-{setup}" for i, (setup, args, _) in enumerate(BAD_INPUTS)])
def test_bad_input_gives_one_line_and_writes_nothing(cli, base, tmp_path, setup, args, expected):
    src = tmp_path / "src"
    SETUPS[setup](src, cli)
    before = tree(tmp_path)
    fill = dict(tmp=tmp_path, src=src, base=base)
    msg = one_line_error(cli(*[a.format(**fill) for a in args]))
    assert expected.format(**fill) in msg
    after = tree(tmp_path)
    if "home/data" not in before:  # the parent of every dataset may be created, empty
        after.pop("home/data", None)
    assert after == before


def test_preprocess_force_replaces_a_dataset(cli, base):
    assert cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "32", *TINY).exit_code == 0
    r = cli("preprocess", "-di", "synthetic", "-dn", "x", "--img-size", "64", *TINY, "--force")
    assert r.exit_code == 0, r.output
    assert json.loads((base / "data" / "x" / "meta.json").read_text())["img_size"] == 64


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
