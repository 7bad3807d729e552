"""Training inputs and inference inputs of a whole-image model are the same pixels.

A file preprocessed into a dataset through the `folder` reader and the same file turned into a
model input by the runtime (no face alignment) must give identical uint8 arrays.
"""

import cv2
import numpy as np
import pytest

from lordkit.data.preprocess import normalise_image, preprocess
from lordkit.data.sources import Options
from lordkit.data.store import Dataset
from lordkit.imaging import square_resize, to_square
from lordkit.runtime import Preparer

# (name, height, width, colour): landscape with an even margin, portrait with an odd one.
PICTURES = [("wide", 61, 97, True), ("tall", 96, 61, True), ("wide-grey", 61, 97, False), ("tall-grey", 96, 61, False)]
FORMATS = [".png", ".jpg"]


def picture(height: int, width: int, colour: bool, seed: int) -> np.ndarray:
    """Gradients plus noise: every resize or rounding difference shows in some pixel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    return img if colour else img[..., 0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """One class folder per file, so a dataset row is found by its class name."""
    root = tmp_path_factory.mktemp("photos")
    paths = {}
    for k, (name, h, w, colour) in enumerate(PICTURES):
        img = picture(h, w, colour, seed=k)
        for suffix in FORMATS:
            label = f"{name}{suffix.replace('.', '-')}"
            (root / label).mkdir()
            path = root / label / f"{name}{suffix}"
            assert cv2.imwrite(str(path), img[..., ::-1] if colour else img)
            paths[label] = path
    return root, paths


@pytest.mark.parametrize("img_size", [32, 61])
@pytest.mark.parametrize("grey_model", [False, True])
def test_preprocessed_file_equals_runtime_input(photos, tmp_path, img_size, grey_model):
    root, paths = photos
    opts = Options({"grey": "true"} if grey_model else {})
    preprocess("folder", root, tmp_path / "ds", img_size=img_size, opts=opts, show_progress=False, workers=1)
    ds = Dataset(tmp_path / "ds")
    channels = 1 if grey_model else 3
    assert ds.images.shape == (len(paths), img_size, img_size, channels)
    warnings: list[str] = []
    prepare = Preparer(img_size, channels, align=False, warn=warnings.append)
    for i, class_id in enumerate(ds.class_ids):
        label = ds.meta.class_names[class_id]
        got = prepare(paths[label])[0].image
        assert got.dtype == np.uint8 and got.shape == (img_size, img_size, channels), label
        assert np.array_equal(got, ds.images[i]), f"{label}: {np.abs(got.astype(int) - ds.images[i]).max()}"
    n_converted = sum(c == (not grey_model) for _, _, _, c in PICTURES) * len(FORMATS)
    assert len(warnings) == n_converted, warnings  # every channel conversion is still reported


def test_square_resize_crops_the_centre_and_picks_the_interpolation():
    img = picture(61, 97, True, seed=7)
    square = to_square(img)
    assert np.array_equal(square, img[:, 18:79])
    assert np.array_equal(to_square(img[:, :96]), img[:, 17:78])  # an odd margin: the extra column on the right
    assert np.array_equal(square_resize(img, 61, 3), square)
    assert np.array_equal(square_resize(img, 32, 3), cv2.resize(square, (32, 32), interpolation=cv2.INTER_AREA))
    assert np.array_equal(square_resize(img, 80, 3), cv2.resize(square, (80, 80), interpolation=cv2.INTER_CUBIC))
    stretched = square_resize(img, 32, 3, square="stretch")
    assert np.array_equal(stretched, cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA))
    # Channels are converted after the resize.
    to_grey = cv2.cvtColor(cv2.resize(square, (32, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    assert np.array_equal(square_resize(img, 32, 1), to_grey[..., None])
    assert np.array_equal(normalise_image(img, 32, 1), to_grey[..., None])
