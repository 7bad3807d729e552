"""latent.hue_weight: a stage-1 term that asks each output for its training image's hue direction."""

import math

import numpy as np
import pytest
import torch

from lordkit.config import ConfigError
from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options
from lordkit.data.store import Dataset
from lordkit.losses import hue_direction, hue_penalty
from lordkit.training import train_latent
from test_training import TINY_DATA, data, metrics, quiet, tiny_cfg  # noqa: F401  (the module's dataset fixture)

RED, GREEN, MID_GREY = (1.0, 0.0, 0.0), (0.0, 0.8, 0.1), (0.5, 0.5, 0.5)


def _image(colour, rows: slice, cols: slice, background=(0.0, 0.0, 0.0), side: int = 32) -> torch.Tensor:
    img = torch.tensor(background).view(3, 1, 1).repeat(1, side, side)
    img[:, rows, cols] = torch.tensor(colour).view(3, 1, 1)
    return img


def _outline(colour, background=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """A one-pixel square outline, 12 px a side, at (8, 8)."""
    img = _image(colour, slice(8, 20), slice(8, 20), background)
    img[:, 9:19, 9:19] = torch.tensor(background).view(3, 1, 1)
    return img


def test_the_hue_direction_is_that_of_the_coloured_pixels_whatever_their_size_place_or_grey_background():
    small = _image(RED, slice(2, 5), slice(3, 7))
    large = _image(RED, slice(10, 30), slice(5, 25))
    on_grey = _image(RED, slice(10, 30), slice(5, 25), background=MID_GREY)
    green = _image(GREEN, slice(10, 30), slice(5, 25))
    d = hue_direction(torch.stack([small, large, on_grey, _outline(RED), green]))
    assert d.shape == (5, 2)
    for row in d[1:4]:  # the floor shortens a 12-pixel object's direction a little, not the larger ones'
        assert torch.allclose(row, d[1], atol=0.03), d
    assert float(d[0].norm()) > 0.8 * float(d[1].norm())
    angle = math.degrees(math.acos(float(torch.nn.functional.cosine_similarity(d[1], d[4], dim=0))))
    assert angle > 90  # red and green are far apart on the opponent plane
    grey = hue_direction(torch.stack([torch.full((3, 32, 32), 0.3), _image(MID_GREY, slice(0, 9), slice(0, 9))]))
    assert grey.abs().max() < 1e-6


def test_a_grey_drawing_of_a_thin_outline_costs_as_much_as_one_of_a_solid_shape():
    """Unlike a pixel loss, which charges a grey outline for its few pixels only."""
    solid_red, solid_grey = _image(RED, slice(8, 20), slice(8, 20)), _image(MID_GREY, slice(8, 20), slice(8, 20))
    thin_red, thin_grey = _outline(RED), _outline(MID_GREY)
    solid = float(hue_penalty(solid_grey[None], solid_red[None]))
    thin = float(hue_penalty(thin_grey[None], thin_red[None]))
    assert solid > 0.5 and abs(thin - solid) < 0.1 * solid, (thin, solid)
    pixel_solid = float((solid_grey - solid_red).abs().mean())
    pixel_thin = float((thin_grey - thin_red).abs().mean())
    assert pixel_thin < 0.5 * pixel_solid
    assert float(hue_penalty(thin_red[None], thin_red[None])) == 0.0


def test_the_gradient_is_finite_on_grey_outputs_and_descending_it_draws_the_hue():
    target = torch.stack([_outline(RED), _outline(GREEN, background=MID_GREY)])
    drawn = torch.stack([_outline(MID_GREY), _outline(MID_GREY, background=MID_GREY)]).requires_grad_(True)
    hue_penalty(drawn, target).backward()
    assert torch.isfinite(drawn.grad).all() and drawn.grad.abs().sum() > 0
    opt = torch.optim.Adam([drawn], lr=1e-2)
    with torch.no_grad():
        start = float(hue_penalty(drawn, target))
    for _ in range(200):
        opt.zero_grad()
        loss = hue_penalty(drawn, target)
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(hue_penalty(drawn, target)) < 0.1 * start
    direction = torch.nn.functional.cosine_similarity(hue_direction(drawn.detach()), hue_direction(target), dim=1)
    assert (direction > 0.95).all(), direction


def test_hue_weight_is_validated_and_off_by_default():
    for bad in ("-0.1", "nan", "inf"):
        with pytest.raises(ConfigError, match="hue_weight must be a finite number >= 0"):
            tiny_cfg(f"latent.hue_weight={bad}")
    assert tiny_cfg().latent.hue_weight == 0.0


@pytest.fixture(scope="module")
def grey_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey")
    preprocess("synthetic", None, root / "syn", img_size=32, opts=Options({**TINY_DATA, "grey": "1"}),
               show_progress=False)
    return Dataset(root / "syn")


def test_stage_one_logs_the_term_when_it_is_on_and_the_images_have_colour(data, grey_data, tmp_path):  # noqa: F811
    assert data.meta.channels == 3 and grey_data.meta.channels == 1
    for name, ds, weight, expected in [("off", data, 0, False), ("on", data, 0.5, True),
                                       ("grey", grey_data, 0.5, False)]:
        m = tmp_path / name
        train_latent(ds, m, tiny_cfg("latent.n_epochs=2", f"latent.hue_weight={weight}"), **quiet())
        rows = [r for r in metrics(m, "latent") if "rec" in r]
        assert rows and all(("hue" in r) == expected for r in rows), name
        assert all(np.isfinite(r["hue"]) and r["hue"] >= 0 for r in rows if "hue" in r)
