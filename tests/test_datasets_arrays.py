"""Readers of the array datasets (MNIST, smallNORB, Cars3D, 3D Shapes) on tiny copies in the official formats."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from lordkit.data.preprocess import normalise_image, preprocess
from lordkit.data.sources import DecodeError, Options, get_reader
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError

IMG_SIZE = 32


def run(dataset_id: str, path: Path, out: Path) -> Dataset:
    preprocess(dataset_id, path, out, img_size=IMG_SIZE, show_progress=False)
    return Dataset(out)


def expected_images(src: list[np.ndarray] | np.ndarray, channels: int) -> np.ndarray:
    """What the pipeline should store for these source images."""
    return np.stack([normalise_image(im, IMG_SIZE, channels) for im in src])


def cut(path: Path, n_bytes: int) -> None:
    """Drop the last n_bytes of a file (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[:-n_bytes])


def test_readers_are_registered():
    for dataset_id in ("mnist", "smallnorb", "cars3d", "shapes3d"):
        spec = get_reader(dataset_id)
        assert spec.summary and spec.needs_path


# ---------------------------------------------------------------- MNIST

MNIST_TRAIN_LABELS = np.arange(8, dtype=np.uint8)  # digits 0..7
MNIST_TEST_LABELS = np.array([8, 9, 0, 1], np.uint8)


def write_idx(path: Path, arr: np.ndarray, gz: bool = False, magic: int | None = None) -> Path:
    magic = magic if magic is not None else 0x00000800 | arr.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + np.ascontiguousarray(arr, np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def mnist_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), "y_train": MNIST_TRAIN_LABELS,
            "x_test": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), "y_test": MNIST_TEST_LABELS}


def write_mnist_idx(folder: Path, gz: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    a = mnist_arrays()
    return {
        "train_images": write_idx(folder / "train-images-idx3-ubyte", a["x_train"], gz),
        "train_labels": write_idx(folder / "train-labels-idx1-ubyte", a["y_train"], gz),
        "test_images": write_idx(folder / "t10k-images-idx3-ubyte", a["x_test"], gz),
        "test_labels": write_idx(folder / "t10k-labels-idx1-ubyte", a["y_test"], gz),
    }


def check_mnist(ds: Dataset) -> None:
    a = mnist_arrays()
    assert ds.meta.class_names == [str(d) for d in range(10)]
    assert ds.images.shape == (12, IMG_SIZE, IMG_SIZE, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.class_ids, np.concatenate([a["y_train"], a["y_test"]]))
    assert (ds.content_ids == -1).all() and ds.meta.content_factors == []
    np.testing.assert_array_equal(ds.images, expected_images(np.concatenate([a["x_train"], a["x_test"]]), 1))
    assert ds.meta.extra["split_sizes"] == {"train": 8, "test": 4}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_idx(tmp_path, monkeypatch, gz):
    from lordkit.data.datasets import mnist

    monkeypatch.setattr(mnist, "CHUNK_IMGS", 3)  # several chunks per file, one cut mid-file
    write_mnist_idx(tmp_path / "src", gz)
    check_mnist(run("mnist", tmp_path / "src", tmp_path / "out"))


def test_mnist_torchvision_layout(tmp_path):
    write_mnist_idx(tmp_path / "root" / "MNIST" / "raw", gz=True)
    check_mnist(run("mnist", tmp_path / "root", tmp_path / "out"))


@pytest.mark.parametrize("point_at", ["file", "folder"])
def test_mnist_keras_npz(tmp_path, point_at):
    (tmp_path / "src").mkdir()
    npz = tmp_path / "src" / "mnist.npz"
    np.savez_compressed(npz, **mnist_arrays())
    check_mnist(run("mnist", npz if point_at == "file" else npz.parent, tmp_path / "out"))


def test_mnist_incomplete_test_set(tmp_path):
    paths = write_mnist_idx(tmp_path / "src", gz=False)
    paths["test_labels"].unlink()
    with pytest.raises(LordkitError, match="test set .* incomplete: t10k-labels-idx1-ubyte"):
        run("mnist", tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_truncated(tmp_path, gz):
    paths = write_mnist_idx(tmp_path / "src", gz)
    cut(paths["train_images"], 100)
    with pytest.raises(LordkitError, match=f"{paths['train_images'].name}.*truncated"):
        run("mnist", tmp_path / "src", tmp_path / "out")


def test_mnist_corrupt_headers(tmp_path):
    a = mnist_arrays()
    paths = write_mnist_idx(tmp_path / "src", gz=False)
    write_idx(paths["train_images"], a["x_train"], magic=0x00000D03)  # float images
    with pytest.raises(LordkitError, match="train-images-idx3-ubyte: not an MNIST IDX file.*magic"):
        run("mnist", tmp_path / "src", tmp_path / "out")
    write_idx(paths["train_images"], a["x_train"])
    write_idx(paths["train_labels"], a["y_train"][:-1])
    with pytest.raises(LordkitError, match="8 images but .* 7 labels"):
        run("mnist", tmp_path / "src", tmp_path / "out")
    write_idx(paths["train_labels"], np.full(8, 11, np.uint8))
    with pytest.raises(LordkitError, match="digits 0..9"):
        run("mnist", tmp_path / "src", tmp_path / "out")
    paths["train_labels"].write_bytes(b"")
    with pytest.raises(LordkitError, match="empty or truncated"):
        run("mnist", tmp_path / "src", tmp_path / "out")


def test_mnist_bad_npz(tmp_path):
    a = mnist_arrays()
    del a["y_test"]
    np.savez(tmp_path / "mnist.npz", **a)
    with pytest.raises(LordkitError, match="missing y_test"):
        run("mnist", tmp_path / "mnist.npz", tmp_path / "out")
    cut(tmp_path / "mnist.npz", 200)
    with pytest.raises(LordkitError, match="mnist.npz: unreadable or truncated"):
        run("mnist", tmp_path / "mnist.npz", tmp_path / "out")
    (tmp_path / "digits.txt").write_text("x")
    with pytest.raises(LordkitError, match="folder holding"):
        run("mnist", tmp_path / "digits.txt", tmp_path / "out")


# ---------------------------------------------------------------- smallNORB

NORB_TRAIN = "smallnorb-5x46789x9x18x6x2x96x96-training"
NORB_TEST = "smallnorb-5x01235x9x18x6x2x96x96-testing"
NORB_MAGIC = {np.uint8: 0x1E3D4C55, np.int32: 0x1E3D4C54}


def write_norb(path: Path, arr: np.ndarray, magic: int | None = None) -> Path:
    magic = magic if magic is not None else NORB_MAGIC[arr.dtype.type]
    dims = list(arr.shape) + [1] * max(0, 3 - arr.ndim)  # at least 3 dims are always stored
    header = np.array([magic, arr.ndim, *dims], "<i4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    return path


def norb_arrays(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 5, n).astype(np.int32)
    info = np.stack([rng.integers(0, 10, n), rng.integers(0, 9, n), 2 * rng.integers(0, 18, n),
                     rng.integers(0, 6, n)], axis=1).astype(np.int32)  # instance, elevation, azimuth, lighting
    info[1], cat[1] = info[0], cat[0]  # two records of one class
    info[1, 2] = (info[0, 2] + 2) % 36  # ... at another azimuth
    return {"dat": rng.integers(0, 256, (n, 2, 96, 96), dtype=np.uint8), "cat": cat, "info": info}


def write_norb_set(folder: Path, stem: str, arrays: dict[str, np.ndarray]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {part: write_norb(folder / f"{stem}-{part}.mat", arr) for part, arr in arrays.items()}


def norb_expected(sets: list[dict[str, np.ndarray]]) -> tuple[list[str], list[str], list[int], np.ndarray]:
    names, contents, images = [], [], []
    for s in sets:
        for r in range(len(s["cat"])):
            inst, elev, azim, light = s["info"][r]
            for k, cam in enumerate(("left", "right")):
                names.append(f"c{s['cat'][r]}_i{inst}_e{elev}_l{light}_{cam}")
                contents.append(azim // 2)
                images.append(s["dat"][r, k])
    return sorted(set(names)), names, contents, expected_images(images, 1)


def test_smallnorb_both_sets(tmp_path, monkeypatch):
    from lordkit.data.datasets import smallnorb

    monkeypatch.setattr(smallnorb, "CHUNK_IMGS", 4)  # 2 records per chunk
    train, test = norb_arrays(0, 7), norb_arrays(1, 4)
    write_norb_set(tmp_path / "src", NORB_TRAIN, train)
    write_norb_set(tmp_path / "src", NORB_TEST, test)
    ds = run("smallnorb", tmp_path / "src", tmp_path / "out")
    class_names, sample_names, contents, images = norb_expected([train, test])
    assert ds.images.shape == (22, IMG_SIZE, IMG_SIZE, 1) and ds.images.dtype == np.uint8
    assert ds.meta.class_names == class_names
    np.testing.assert_array_equal(ds.class_ids, [class_names.index(n) for n in sample_names])
    assert ds.class_ids[0] == ds.class_ids[2] and ds.content_ids[0] != ds.content_ids[2]  # same class, other azimuth
    np.testing.assert_array_equal(ds.content_ids, contents)
    assert ds.content_ids.min() >= 0 and ds.content_ids.max() <= 17
    assert ds.meta.content_factors == ["azimuth"]
    assert ds.meta.extra["content_grid"] == {"azimuth": 18}
    assert ds.meta.extra["split_sizes"] == {"train": 14, "test": 8}
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.per_image["camera"], np.tile([0, 1], 11))
    np.testing.assert_array_equal(ds.per_image["category"], np.repeat(np.concatenate([train["cat"], test["cat"]]), 2))


def test_smallnorb_one_set_and_file_path(tmp_path):
    test = norb_arrays(2, 3)
    paths = write_norb_set(tmp_path / "src", NORB_TEST, test)
    ds = run("smallnorb", paths["dat"], tmp_path / "out")  # a file of the set: its folder is read
    class_names, sample_names, contents, images = norb_expected([test])
    assert ds.meta.class_names == class_names and len(ds) == 6
    np.testing.assert_array_equal(ds.images, images)


def test_smallnorb_incomplete_set(tmp_path):
    paths = write_norb_set(tmp_path / "src", NORB_TRAIN, norb_arrays(0, 3))
    paths["info"].unlink()
    with pytest.raises(LordkitError, match=f"incomplete: {NORB_TRAIN}-info.mat not found"):
        run("smallnorb", tmp_path / "src", tmp_path / "out")


def test_smallnorb_corrupt_files(tmp_path):
    arrays = norb_arrays(0, 3)
    paths = write_norb_set(tmp_path / "src", NORB_TRAIN, arrays)
    cut(paths["dat"], 1000)
    with pytest.raises(LordkitError, match=f"{NORB_TRAIN}-dat.mat: file is truncated"):
        run("smallnorb", tmp_path / "src", tmp_path / "out")
    write_norb(paths["dat"], arrays["dat"], magic=0x12345678)
    with pytest.raises(LordkitError, match="dat.mat: not a NORB matrix file"):
        run("smallnorb", tmp_path / "src", tmp_path / "out")
    paths["dat"].write_bytes(gzip.compress(b"\x00" * 64))
    with pytest.raises(LordkitError, match="gunzip"):
        run("smallnorb", tmp_path / "src", tmp_path / "out")
    write_norb(paths["dat"], arrays["dat"])
    write_norb(paths["cat"], arrays["cat"][:2])
    with pytest.raises(LordkitError, match=r"cat.mat: expected integer \(3,\) categories"):
        run("smallnorb", tmp_path / "src", tmp_path / "out")
    write_norb(paths["cat"], arrays["cat"])
    write_norb(paths["dat"], arrays["dat"][:, 0])  # one camera only
    with pytest.raises(LordkitError, match=r"dat.mat: expected a uint8 \(N, 2, H, W\)"):
        run("smallnorb", tmp_path / "src", tmp_path / "out")
    write_norb(paths["dat"], arrays["dat"])
    bad = arrays["info"].copy()
    bad[0, 2] = 36
    write_norb(paths["info"], bad)
    with pytest.raises(LordkitError, match="info.mat: azimuth 36 outside 0..34"):
        run("smallnorb", tmp_path / "src", tmp_path / "out")


# ---------------------------------------------------------------- Cars3D

CAR_NAMES = ["car_001_mesh", "car_002_mesh", "car_003_mesh"]


@pytest.fixture(scope="module")
def cars_root(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The unpacked archive root holding cars/ with three renders of the real shape (written once)."""
    import scipy.io

    root = tmp_path_factory.mktemp("cars3d")
    (root / "cars").mkdir()
    rng = np.random.default_rng(0)
    ims = {}
    for name in CAR_NAMES[::-1]:  # written out of order: ids must still follow sorted names
        ims[name] = rng.integers(0, 256, (128, 128, 3, 24, 4), dtype=np.uint8)
        scipy.io.savemat(root / "cars" / f"{name}.mat", {"im": ims[name]})
    return root, ims


@pytest.mark.parametrize("point_at", ["cars", "parent"])
def test_cars3d(tmp_path, cars_root, point_at):
    root, ims = cars_root
    ds = run("cars3d", root / "cars" if point_at == "cars" else root, tmp_path / "out")
    assert ds.images.shape == (288, IMG_SIZE, IMG_SIZE, 3) and ds.images.dtype == np.uint8
    assert ds.meta.class_names == CAR_NAMES
    np.testing.assert_array_equal(ds.class_ids, np.repeat(np.arange(3), 96))
    np.testing.assert_array_equal(ds.content_ids, np.tile(np.arange(96), 3))
    assert ds.meta.content_factors == ["elevation", "azimuth"]
    assert ds.meta.extra["content_grid"] == {"elevation": 4, "azimuth": 24}
    # Content id = elevation * 24 + azimuth; spot-check viewpoints of every car.
    for car, name in enumerate(CAR_NAMES):
        for elevation, azimuth in [(0, 0), (0, 23), (1, 5), (3, 0), (3, 23)]:
            i = car * 96 + elevation * 24 + azimuth
            want = normalise_image(ims[name][:, :, :, azimuth, elevation], IMG_SIZE, 3)
            np.testing.assert_array_equal(ds.images[i], want)


def test_cars3d_bad_files(tmp_path, cars_root):
    import scipy.io

    root, _ = cars_root
    folder = tmp_path / "cars"
    folder.mkdir()
    good = (root / "cars" / "car_001_mesh.mat").read_bytes()
    (folder / "car_001_mesh.mat").write_bytes(good)
    (folder / "car_002_mesh.mat").write_bytes(good[: len(good) // 2])  # truncated download
    (folder / "car_003_mesh.mat").write_bytes(b"not a mat file at all" * 10)
    scipy.io.savemat(folder / "car_004_mesh.mat", {"img": np.zeros((2, 2), np.uint8)})
    scipy.io.savemat(folder / "car_005_mesh.mat", {"im": np.zeros((8, 8, 3, 24, 2), np.uint8)})
    source = get_reader("cars3d").open(folder, Options())
    assert [c.n_expected for c in source.chunks] == [96] * 5
    assert source.chunks[0].load().images.shape == (96, 128, 128, 3)
    for chunk, message in zip(source.chunks[1:], ["car_002_mesh.mat is not a readable MATLAB file",
                                                  "car_003_mesh.mat is not a readable MATLAB file",
                                                  "car_004_mesh.mat has no variable 'im'",
                                                  r"car_005_mesh.mat: 'im' must be uint8 \(H, W, 3, 24, 4\)"]):
        with pytest.raises(DecodeError, match=message):
            chunk.load()
    # Through the pipeline: more than 1% of the images failed, so the run stops and names the first.
    with pytest.raises(LordkitError, match="failed to decode.*car_002_mesh.mat"):
        run("cars3d", folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cars3d_without_scipy(tmp_path, cars_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io now raises ImportError
    with pytest.raises(LordkitError, match=r"lordkit\[train\]"):
        get_reader("cars3d").open(cars_root[0], Options())


# ---------------------------------------------------------------- 3D Shapes

SHAPES_VALUES = [np.linspace(0, 0.9, 10), np.linspace(0, 0.9, 10), np.linspace(0, 0.9, 10),
                 np.linspace(0.75, 1.25, 8), np.arange(4.0), np.linspace(-30, 30, 15)]  # official factor values


def shapes_arrays(n: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, float labels and the factor indices of a partial covering of the factor grid."""
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, len(v), n) for v in SHAPES_VALUES], axis=1)  # (n, 6)
    idx[:, 4] = np.arange(n) % 4  # every shape present
    labels = np.stack([SHAPES_VALUES[f][idx[:, f]] for f in range(6)], axis=1)  # (n, 6) float64
    return rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), labels, idx


def write_shapes(path: Path, images: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if images is not None:
            f.create_dataset("images", data=images, chunks=(4, *images.shape[1:]))
        if labels is not None:
            f.create_dataset("labels", data=labels)
    return path


@pytest.mark.parametrize("point_at", ["file", "folder"])
def test_shapes3d(tmp_path, monkeypatch, point_at):
    from lordkit.data.datasets import shapes3d

    monkeypatch.setattr(shapes3d, "CHUNK_IMGS", 10)  # 5 chunks, the last one short
    images, labels, idx = shapes_arrays()
    file = write_shapes(tmp_path / "src" / "3dshapes.h5", images, labels)
    ds = run("shapes3d", file if point_at == "file" else file.parent, tmp_path / "out")
    assert ds.images.shape == (48, IMG_SIZE, IMG_SIZE, 3) and ds.images.dtype == np.uint8
    assert ds.meta.class_names == ["capsule", "cube", "cylinder", "sphere"]
    official = ["cube", "cylinder", "sphere", "capsule"]
    np.testing.assert_array_equal(ds.class_ids, [ds.meta.class_names.index(official[s]) for s in idx[:, 4]])
    assert ds.meta.content_factors == ["floor_hue", "wall_hue", "object_hue", "scale", "orientation"]
    # Each content factor numbered by its sorted values present, then flattened row-major.
    ranks, sizes = [], []
    for f in (0, 1, 2, 3, 5):
        uniq, inverse = np.unique(idx[:, f], return_inverse=True)
        ranks.append(inverse)
        sizes.append(len(uniq))
    np.testing.assert_array_equal(ds.content_ids, np.ravel_multi_index(ranks, sizes))
    assert list(ds.meta.extra["content_grid"].values()) == sizes
    assert list(ds.meta.extra["content_grid"]) == ds.meta.content_factors
    np.testing.assert_allclose(ds.meta.extra["factor_values"]["scale"], SHAPES_VALUES[3][np.unique(idx[:, 3])])
    np.testing.assert_array_equal(ds.images, expected_images(images, 3))


def test_shapes3d_bad_files(tmp_path):
    images, labels, _ = shapes_arrays(12)
    file = tmp_path / "3dshapes.h5"
    file.write_bytes(b"\x89HDF\r\n" + b"\x00" * 100)
    with pytest.raises(LordkitError, match="3dshapes.h5: not a readable HDF5 file"):
        run("shapes3d", file, tmp_path / "out")
    write_shapes(file, images, labels)
    cut(file, 20000)
    with pytest.raises(LordkitError, match="3dshapes.h5: not a readable HDF5 file"):
        run("shapes3d", file, tmp_path / "out")
    write_shapes(file, images)
    with pytest.raises(LordkitError, match="missing dataset labels"):
        run("shapes3d", file, tmp_path / "out")
    write_shapes(file, images[:, :32], labels)
    with pytest.raises(LordkitError, match=r"images must be uint8 \(N, 64, 64, 3\)"):
        run("shapes3d", file, tmp_path / "out")
    write_shapes(file, images, labels[:-1])
    with pytest.raises(LordkitError, match=r"labels must be numeric \(12, 6\)"):
        run("shapes3d", file, tmp_path / "out")
    bad = labels.copy()
    bad[0, 4] = 7
    write_shapes(file, images, bad)
    with pytest.raises(LordkitError, match="shape labels must be 0..3"):
        run("shapes3d", file, tmp_path / "out")


def test_shapes3d_without_h5py(tmp_path, monkeypatch):
    images, labels, _ = shapes_arrays(4)
    file = write_shapes(tmp_path / "3dshapes.h5", images, labels)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(LordkitError, match=r"lordkit\[train\]"):
        get_reader("shapes3d").open(file, Options())


EMPTY_SOURCE = [  # (dataset id, folder made inside the empty source, the error naming what was expected)
    ("mnist", "", "train-images-idx3-ubyte.*mnist.npz"),
    ("smallnorb", "", f"no smallNORB files .*{NORB_TRAIN}-{{dat,cat,info}}.mat"),
    ("cars3d", "cars", "no Cars3D files .*cars/ folder of per-car .mat files"),
    ("shapes3d", "", "3dshapes.h5 or a folder holding it"),
]


@pytest.mark.parametrize("dataset_id, inside, message", EMPTY_SOURCE)
def test_missing_or_empty_source(tmp_path, dataset_id, inside, message):
    with pytest.raises(LordkitError, match="not found"):
        run(dataset_id, tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(LordkitError, match="not found"):
        get_reader(dataset_id).open(tmp_path / "nowhere", Options())
    (tmp_path / "empty" / inside).mkdir(parents=True)
    with pytest.raises(LordkitError, match=message):
        run(dataset_id, tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
