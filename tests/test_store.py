import json

import numpy as np
import pytest

from lordkit.data.preprocess import normalise_image, preprocess
from lordkit.data.sources import Options
from lordkit.data.splits import split_classes, split_samples
from lordkit.data.store import Dataset, DatasetMeta, StoreWriter
from lordkit.errors import LordkitError
from lordkit.fsutil import validate_name

TINY = Options({"n_x": "2", "n_y": "2", "n_scale": "1", "n_rotation": "2", "n_hue": "2", "n_shapes": "3"})


def tiny_synthetic(tmp_path, name="syn", size=32):
    preprocess("synthetic", None, tmp_path / name, img_size=size, opts=Options(dict(TINY.raw)),
               show_progress=False)
    return Dataset(tmp_path / name)


def test_store_roundtrip_is_memory_mapped(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    w = StoreWriter(d, 8, 3)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    w.add(imgs[:2], np.array([0, 1]), -1, {"frame_index": np.array([3, 4])})
    w.add(imgs[2:], 1, np.array([7, 8, 9]), {"frame_index": 0})
    w.close(DatasetMeta(dataset_id="x", class_names=["a", "b"], img_size=8, channels=3, n_imgs=0))
    ds = Dataset(d)
    assert isinstance(ds.images, np.memmap)
    np.testing.assert_array_equal(ds.images, imgs)
    assert ds.class_ids.tolist() == [0, 1, 1, 1, 1]
    assert ds.content_ids.tolist() == [-1, -1, 7, 8, 9]
    assert ds.per_image["frame_index"].tolist() == [3, 4, 0, 0, 0]
    assert ds.meta.n_imgs == 5 and ds.n_classes == 2
    # np.load reads it as an ordinary .npy too
    assert np.load(d / "images.npy").shape == (5, 8, 8, 3)


def test_store_validation_names_the_file(tmp_path):
    ds = tiny_synthetic(tmp_path)
    path = ds.path
    # Truncated images file.
    data = (path / "images.npy").read_bytes()
    (path / "images.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(LordkitError, match="images.npy"):
        Dataset(path)
    (path / "images.npy").write_bytes(data)
    # Labels of the wrong length.
    np.save(path / "class_ids.npy", np.zeros(3, np.int64))
    with pytest.raises(LordkitError, match="class_ids.npy"):
        Dataset(path)
    # Not a dataset at all.
    (path / "meta.json").write_text("{not json")
    with pytest.raises(LordkitError, match="meta.json"):
        Dataset(path)
    with pytest.raises(LordkitError, match="not found"):
        Dataset(tmp_path / "nope")


def test_synthetic_is_deterministic_and_complete(tmp_path):
    a = tiny_synthetic(tmp_path, "a")
    b = tiny_synthetic(tmp_path, "b")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.meta.class_names == ["circle", "cross", "square"]
    n_contents = 2 * 2 * 1 * 2 * 2
    assert len(a) == 3 * n_contents
    # Every (class, content) pair exists exactly once, and renders to the stored image.
    pairs = set(zip(a.class_ids.tolist(), a.content_ids.tolist()))
    assert len(pairs) == len(a) == 3 * n_contents
    from lordkit.data.datasets.synthetic import render_truth

    grid = a.meta.extra["content_grid"]
    for i in (0, 5, len(a) - 1):
        truth = render_truth(int(a.class_ids[i]), int(a.content_ids[i]), 32, grid)
        np.testing.assert_array_equal(truth, a.images[i])
    # Shapes differ between classes for the same content (the class is visible).
    assert np.abs(a.images[0].astype(int) - a.images[n_contents].astype(int)).sum() > 0


def test_synthetic_class_colours(tmp_path):
    from lordkit.data.datasets.synthetic import render_truth
    from lordkit.evaluation import TruthLookup

    opts = {"n_x": "2", "n_y": "1", "n_scale": "1", "n_rotation": "1", "n_shapes": "3", "colour": "class"}
    preprocess("synthetic", None, tmp_path / "c", img_size=32, opts=Options(opts), show_progress=False)
    ds = Dataset(tmp_path / "c")
    assert ds.meta.content_factors == ["x", "y", "scale", "rotation"] and ds.meta.extra["colour"] == "class"
    assert len(ds) == 3 * 2
    # One colour per shape, the same for every content; different shapes, different colours.
    brightest = [ds.images[ds.class_ids == c].reshape(-1, 3).max(0) for c in range(3)]
    for c in range(3):
        imgs = ds.images[ds.class_ids == c]
        np.testing.assert_array_equal(imgs[0].reshape(-1, 3).max(0), imgs[1].reshape(-1, 3).max(0))
    assert len({tuple(m) for m in brightest}) == 3
    # The truth used for scoring transfer draws the same images.
    look = TruthLookup(ds, {})
    for i in range(len(ds)):
        np.testing.assert_array_equal(look(int(ds.class_ids[i]), int(ds.content_ids[i])), ds.images[i])
    i = int(np.flatnonzero(ds.class_ids == 1)[0])  # a cross: its class hue is not the grid's hue 0
    assert not np.array_equal(render_truth(1, int(ds.content_ids[i]), 32, ds.meta.extra["content_grid"]), ds.images[i])
    with pytest.raises(LordkitError, match="n_hue"):
        preprocess("synthetic", None, tmp_path / "bad", img_size=32, opts=Options({"colour": "class", "n_hue": "3"}),
                   show_progress=False)
    with pytest.raises(LordkitError, match="colour"):
        preprocess("synthetic", None, tmp_path / "bad", img_size=32, opts=Options({"colour": "shape"}),
                   show_progress=False)


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_image_sizes(tmp_path, size):
    ds = tiny_synthetic(tmp_path, f"s{size}", size)
    assert ds.images.shape[1:] == (size, size, 3)


def test_normalise_image_handles_grey_alpha_and_aspect():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    out = normalise_image(rgba, 16, 3)
    assert out.shape == (16, 16, 3) and out[..., 0].min() == 200
    grey = normalise_image(np.full((10, 10), 50, np.uint8), 16, 3)
    assert grey.shape == (16, 16, 3) and (grey == 50).all()
    to_grey = normalise_image(np.full((20, 20, 3), 100, np.uint8), 8, 1)
    assert to_grey.shape == (8, 8, 1)


def test_split_samples_reproducible_and_keeps_classes(tmp_path):
    ds = tiny_synthetic(tmp_path)
    tr1, te1 = split_samples(ds, tmp_path / "tr1", tmp_path / "te1", 0.25, seed=7)
    tr2, te2 = split_samples(ds, tmp_path / "tr2", tmp_path / "te2", 0.25, seed=7)
    _, te3 = split_samples(ds, tmp_path / "tr3", tmp_path / "te3", 0.25, seed=8)
    assert te1.tolist() == te2.tolist() and te1.tolist() != te3.tolist()
    assert len(te1) == round(0.25 * len(ds)) and not set(tr1) & set(te1)
    train, test = Dataset(tmp_path / "tr1"), Dataset(tmp_path / "te1")
    assert train.meta.class_names == ds.meta.class_names and test.n_classes == ds.n_classes
    np.testing.assert_array_equal(test.images, ds.images[te1])
    np.testing.assert_array_equal(test.per_image["parent_index"], te1)
    assert test.meta.extra["split"]["seed"] == 7
    np.testing.assert_array_equal(np.load(tmp_path / "tr1" / "images.npy"),
                                  np.load(tmp_path / "tr2" / "images.npy"))


def test_split_classes_holds_out_whole_classes(tmp_path):
    ds = tiny_synthetic(tmp_path)
    tr, te = split_classes(ds, tmp_path / "tr", tmp_path / "te", 1, seed=3)
    train, test = Dataset(tmp_path / "tr"), Dataset(tmp_path / "te")
    assert len(set(test.class_ids.tolist())) == 1
    assert not set(train.class_ids.tolist()) & set(test.class_ids.tolist())
    assert test.n_classes == 3 and len(tr) + len(te) == len(ds)
    with pytest.raises(LordkitError, match="already exists"):
        split_classes(ds, tmp_path / "tr", tmp_path / "te", 1)
    with pytest.raises(LordkitError, match="between 1 and 2"):
        split_classes(ds, tmp_path / "a", tmp_path / "b", 3, force=True)


def test_names_that_become_paths_are_validated():
    for bad in ["../x", "a/b", "", ".hidden", "x" * 200, "a\\b"]:
        with pytest.raises(LordkitError):
            validate_name(bad)
    assert validate_name("celeba-64_v1.2") == "celeba-64_v1.2"


def test_existing_dataset_needs_force_and_failure_leaves_nothing(tmp_path):
    tiny_synthetic(tmp_path)
    with pytest.raises(LordkitError, match="--force"):
        tiny_synthetic(tmp_path)
    with pytest.raises(LordkitError, match="unknown --opt"):
        preprocess("synthetic", None, tmp_path / "z", opts=Options({"n_colour": "3"}), show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]
    meta = json.loads((tmp_path / "syn" / "meta.json").read_text())
    assert meta["n_classes"] == 3 and meta["lordkit_version"]
