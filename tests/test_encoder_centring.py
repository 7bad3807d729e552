"""The encoders' input centring (amortized.centre_inputs -> model.encoder_input_mean): stage 2 fits the
training images' mean colour, the encoders subtract it, old weights still load, exports carry it."""

import json

import numpy as np
import pytest
import torch

from lordkit.config import ConfigError, LordConfig, tiny_model
from lordkit.models import Encoder
from lordkit.modeldir import config_path, load_amortized
from lordkit.training import TrainingInterrupted, train_amortized, train_latent
from lordkit.training.amortized import channel_means
from test_training import data, interrupt_at, quiet, tiny_cfg  # noqa: F401  (data: a fixture)


def test_the_encoder_subtracts_the_mean_and_keeps_it_out_of_its_weights():
    plain_cfg = tiny_model(32, 3, n_imgs=4, n_classes=2)
    centred_cfg = tiny_model(32, 3, n_imgs=4, n_classes=2, encoder_input_mean=(0.9, 0.1, 0.5))
    torch.manual_seed(0)
    plain = Encoder(plain_cfg, 8).eval()
    centred = Encoder(centred_cfg, 8).eval()
    assert set(centred.state_dict()) == set(plain.state_dict())  # weights written before the field still load
    centred.load_state_dict(plain.state_dict())
    img = torch.rand(5, 3, 32, 32)
    mean = torch.tensor([0.9, 0.1, 0.5]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(centred(img), plain(img - mean))
        assert (centred(img) - plain(img)).abs().max() > 1e-3


@pytest.mark.parametrize("mean, message", [((0.5, 0.5), "3 values"), ((0.5, 0.5, 1.5), r"in \[0, 1\]"),
                                           ((0.5, float("nan"), 0.5), r"in \[0, 1\]")])
def test_a_wrong_mean_is_refused(mean, message):
    with pytest.raises(ConfigError, match=message):
        tiny_model(32, 3, n_imgs=4, n_classes=2, encoder_input_mean=mean)


def test_channel_means_are_the_images_mean_per_channel(data):  # noqa: F811
    want = np.asarray(data.images, np.float64).mean(axis=(0, 1, 2)) / 255.0
    np.testing.assert_allclose(channel_means(data, chunk=5), want, atol=1e-6)


def test_stage_two_fits_the_mean_and_a_resume_keeps_it(data, tmp_path):  # noqa: F811
    cfg = tiny_cfg("latent.n_epochs=2")
    assert cfg.amortized.centre_inputs  # the small preset centres
    for name in ("a", "b", "off"):
        train_latent(data, tmp_path / name, cfg, **quiet())
    train_amortized(data, tmp_path / "a", changes={"n_epochs": 2}, **quiet())
    saved = json.loads(config_path(tmp_path / "a").read_text())["model"]["encoder_input_mean"]
    assert saved == pytest.approx(list(channel_means(data)))
    model = load_amortized(tmp_path / "a")
    torch.testing.assert_close(model.class_encoder.input_mean.flatten(), torch.tensor(saved))

    # Interrupted and resumed: the same mean and the same weights as the uninterrupted run.
    with pytest.raises(TrainingInterrupted):
        train_amortized(data, tmp_path / "b", changes={"n_epochs": 2}, **quiet(on_step=interrupt_at(2)))
    assert json.loads(config_path(tmp_path / "b").read_text())["model"]["encoder_input_mean"] == saved
    train_amortized(data, tmp_path / "b", resume=True, **quiet())
    a, b = load_amortized(tmp_path / "a").state_dict(), load_amortized(tmp_path / "b").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)

    # Turned off, nothing is subtracted, and a retrain with --force clears an earlier mean.
    train_amortized(data, tmp_path / "off", changes={"n_epochs": 1, "centre_inputs": False}, **quiet())
    assert json.loads(config_path(tmp_path / "off").read_text())["model"]["encoder_input_mean"] == []
    train_amortized(data, tmp_path / "a", changes={"n_epochs": 1, "centre_inputs": False}, force=True, **quiet())
    assert json.loads(config_path(tmp_path / "a").read_text())["model"]["encoder_input_mean"] == []


def test_a_config_without_the_field_loads_uncentred():
    cfg = LordConfig(model=tiny_model(32, 1, n_imgs=4, n_classes=2))
    d = cfg.to_json()
    del d["model"]["encoder_input_mean"]  # a config.json written before the field existed
    assert LordConfig.from_json(d).model.encoder_input_mean == ()
    assert not Encoder(cfg.model, 4).centred
