"""VGG16 perceptual loss on a torchvision-layout state dict with random weights; finding the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lordkit import losses
from lordkit.errors import LordkitError
from lordkit.losses import (IMAGENET_MEAN, IMAGENET_STD, L1Loss, LaplacianL1Loss, PerceptualLoss, VGG16Features, content_penalty, find_vgg_weights, make_loss,
                            vgg_cache_path)

CONV_IDS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_DIMS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("LORDKIT_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's vgg16 key layout, classifier included (it must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    state, c_in = {}, 3
    for idx, c_out in zip(CONV_IDS, CONV_DIMS):
        std = (2.0 / (9 * c_in)) ** 0.5  # He init keeps activations alive through 13 layers
        state[f"features.{idx}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * std
        state[f"features.{idx}.bias"] = torch.randn(c_out, generator=g) * 0.01
        c_in = c_out
    state["classifier.0.weight"] = torch.zeros(4, 7)
    state["classifier.0.bias"] = torch.zeros(4)
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg16-test.pth"
    torch.save(torchvision_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vgg(vgg_file) -> VGG16Features:
    return VGG16Features.from_file(vgg_file)


def test_vgg_loads_torchvision_layout(vgg, vgg_file) -> None:
    state = torch.load(vgg_file, weights_only=True)
    for idx in CONV_IDS:
        torch.testing.assert_close(vgg.features[idx].weight, state[f"features.{idx}.weight"])
    assert len(vgg.features) == 31
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training  # stays in eval mode


def test_vgg_feature_shapes(vgg) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = vgg(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8),
                                               (2, 512, 4, 4), (2, 512, 1, 1)]
    assert all((f >= 0).all() for f in feats)  # read after the ReLU
    # Same as running torchvision-style indices by hand: layer 2's conv, then its ReLU.
    with torch.no_grad():
        h = x
        for i in range(4):
            h = vgg.features[i](h)
    torch.testing.assert_close(feats[0], h)


def test_vgg_safetensors(tmp_path) -> None:
    path = tmp_path / "vgg16.safetensors"
    save_file(torchvision_state_dict(1), str(path))
    vgg = VGG16Features.from_file(path)
    torch.testing.assert_close(vgg.features[28].bias, torchvision_state_dict(1)["features.28.bias"])


def test_vgg_bad_files(tmp_path) -> None:
    state = torchvision_state_dict()
    del state["features.26.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(LordkitError, match="features.26.weight"):
        VGG16Features.from_file(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LordkitError, match="cannot read") as e:
        VGG16Features.from_file(tmp_path / "junk.pth")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("channels", [3, 1])
def test_perceptual_loss(vgg, channels: int) -> None:
    loss_fn = PerceptualLoss(vgg)
    torch.manual_seed(0)
    a = torch.rand(2, channels, 32, 32)
    b = torch.rand(2, channels, 32, 32)
    assert loss_fn(a, a.clone()).item() == 0.0
    pred = a.clone().requires_grad_(True)
    loss = loss_fn(pred, b)
    assert loss.item() > loss_fn(a, a.clone()).item()
    assert loss.item() > L1Loss()(a, b).item()  # the feature terms add to the pixel term
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())
    # The definition, written out: pixel L1 plus the L1 between the VGG features of both images at the
    # five taps (the loss computes the target's features apart, without autograd; same value, same gradient).
    mean, std = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    ref_pred = a.clone().requires_grad_(True)
    x = (torch.cat([ref_pred, b]).expand(-1, 3, -1, -1) - mean) / std
    want = (ref_pred - b).abs().mean()
    for i, layer in enumerate(vgg.features):
        x = layer(x)
        if i in (3, 8, 13, 22, 30):
            want = want + (x[:2] - x[2:]).abs().mean()
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred.grad, ref_pred.grad, rtol=1e-4, atol=1e-7)


def test_l1_and_penalty() -> None:
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.25)
    assert L1Loss()(a, b).item() == pytest.approx(0.25)
    assert content_penalty(torch.tensor([[1.0, 2.0], [0.0, 2.0]])).item() == pytest.approx(4.5)


def test_laplacian_l1_pyramid_rebuilds_the_image_and_weighs_thin_strokes() -> None:
    f = LaplacianL1Loss()
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0))
    levels = f.pyramid(x)
    assert [tuple(t.shape[-2:]) for t in levels] == [(32, 24), (16, 12), (8, 6)]  # 3 px would be below 4
    assert len(f.pyramid(torch.rand(1, 1, 256, 256))) == f.MAX_LEVELS + 1
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = f.expand(rebuilt, band.shape[-2:]) + band
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-5)
    assert len(f.pyramid(torch.rand(1, 1, 7, 7))) == 1  # too small to halve: the image alone, as L1
    assert f(x, x).item() == 0
    # A one-pixel line on black: drawing nothing costs more than under pixel L1, and a line drawn one
    # pixel off costs less than drawing nothing (under pixel L1 it costs twice as much).
    line = torch.zeros(1, 1, 32, 32)
    line[..., 16, 4:28] = 1
    blank, moved = torch.zeros_like(line), line.roll(1, dims=2)
    assert f(blank, line) > L1Loss()(blank, line)
    assert f(moved, line) < f(blank, line) and L1Loss()(moved, line) > L1Loss()(blank, line)
    pred = blank.clone().requires_grad_(True)
    f(pred, line).backward()
    assert pred.grad[..., 16, 4:28].lt(0).all()  # pulled up where the line is
    # Under the trainer's bf16 autocast the loss is the float32 one (a bf16 blur moved it by ~6%).
    near = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = f(x, near)
    torch.testing.assert_close(in_autocast, f(x, near), rtol=1e-6, atol=0)


def test_find_vgg_explicit_missing(tmp_path) -> None:
    with pytest.raises(LordkitError) as e:
        find_vgg_weights(tmp_path / "nope.pth")
    assert "nope.pth" in str(e.value) and "\n" not in str(e.value)


def test_find_vgg_in_torch_home(tmp_path, vgg_file) -> None:
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert vgg_cache_path() == cached
    cached.parent.mkdir(parents=True)
    cached.write_bytes(vgg_file.read_bytes())
    assert find_vgg_weights(None) == cached
    assert find_vgg_weights(str(vgg_file)) == vgg_file  # an explicit path wins


def test_find_vgg_xdg_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vgg_cache_path() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"


def test_find_vgg_not_available_offline(tmp_path) -> None:
    calls = []
    with pytest.raises(LordkitError) as e:
        find_vgg_weights(None, download=lambda url, dst: calls.append(url) or True)
    msg = str(e.value)
    assert calls == []  # LORDKIT_OFFLINE=1: the downloader is never called
    assert "\n" not in msg and losses.VGG16_URL in msg and "--vgg-weights" in msg and "--loss l1" in msg
    assert str(tmp_path / "torch-home") in msg


def test_find_vgg_downloads_when_online(monkeypatch, vgg_file) -> None:
    monkeypatch.delenv("LORDKIT_OFFLINE")

    def fake_download(url: str, dst: Path) -> bool:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(vgg_file.read_bytes())
        return True

    assert find_vgg_weights(None, download=fake_download) == vgg_cache_path()
    vgg_cache_path().unlink()
    with pytest.raises(LordkitError, match="not available"):
        find_vgg_weights(None, download=lambda url, dst: False)  # network error


def test_make_loss(vgg_file) -> None:
    assert isinstance(make_loss("l1"), L1Loss) and isinstance(make_loss("lap1"), LaplacianL1Loss)
    assert isinstance(make_loss("vgg", vgg_file), PerceptualLoss)
    with pytest.raises(LordkitError, match="unknown loss"):
        make_loss("mse")
    with pytest.raises(LordkitError, match="not available"):
        make_loss("vgg")


def test_the_reference_perceptual_loss_has_the_same_value_and_trains_vgg(vgg) -> None:
    """The benchmarks' reference row (lordkit.bench.reference.RefVGGDistance): the same loss value as
    PerceptualLoss, computed the reference's way (VGG's weight gradients computed for both images)."""
    import copy

    from lordkit.bench.reference import RefVGGDistance

    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    ref = RefVGGDistance(copy.deepcopy(vgg))
    pred = a.clone().requires_grad_(True)
    value = ref(pred, b)
    torch.testing.assert_close(value, PerceptualLoss(vgg)(a, b), rtol=1e-5, atol=1e-6)
    value.backward()
    assert pred.grad is not None and all(p.grad is not None for p in ref.vgg.parameters())
