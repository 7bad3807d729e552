"""Import of a model dir written by the public PyTorch re-implementation.

The reference's formulation is re-stated here in a few lines (same module names and layouts, AdaIN
parameters assigned onto modules before the forward as it does), used to write a fake reference dir,
and compared with lordkit's models loaded from the import.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lordkit.errors import LordkitError
from lordkit.models import AmortizedModel, LatentModel, transfer_net
from lordkit.reference import import_reference, map_reference_key, read_reference_config, restricted_loads

# --- the reference formulation ------------------------------------------------------------------


class RefAdaIN(nn.Module):
    def __init__(self, idx: int):
        super().__init__()
        self.idx = idx
        self.weight = None  # assigned from outside before each forward
        self.bias = None

    def forward(self, x):
        b, c, h, w = x.shape
        out = F.batch_norm(x.reshape(1, b * c, h, w), None, None, self.weight.reshape(-1),
                           self.bias.reshape(-1), training=True)
        return out.reshape(b, c, h, w)


class RefEmbedding(nn.Module):
    def __init__(self, n, dim):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)

    def forward(self, ids):
        return self.embedding(ids)  # eval mode: no noise


class RefModulation(nn.Module):
    def __init__(self, code_dim, n_layers, dim):
        super().__init__()
        self.n_layers, self.dim = n_layers, dim
        self.adain_per_layer = nn.ModuleList([nn.Linear(code_dim, dim * 2) for _ in range(n_layers)])

    def forward(self, x):
        return torch.cat([f(x) for f in self.adain_per_layer], -1).reshape(-1, self.n_layers, self.dim, 2)


class RefGenerator(nn.Module):
    def __init__(self, content_dim, n_layers, dim, img_shape):
        super().__init__()
        self.s = img_shape[0] // 2**n_layers
        self.dim = dim
        area = self.s * self.s
        self.fc_layers = nn.Sequential(nn.Linear(content_dim, area * dim // 8), nn.LeakyReLU(),
                                       nn.Linear(area * dim // 8, area * dim // 4), nn.LeakyReLU(),
                                       nn.Linear(area * dim // 4, area * dim), nn.LeakyReLU())
        blocks = []
        for i in range(n_layers):
            blocks += [nn.Upsample(scale_factor=(2, 2)), nn.Conv2d(dim, dim, 3, padding=1), nn.LeakyReLU(), RefAdaIN(i)]
        self.adain_conv_layers = nn.Sequential(*blocks)
        self.last_conv_layers = nn.Sequential(nn.Conv2d(dim, 64, 5, padding=2), nn.LeakyReLU(),
                                              nn.Conv2d(64, img_shape[2], 7, padding=3), nn.Sigmoid())

    def forward(self, content_code, params):
        for m in self.adain_conv_layers:
            if isinstance(m, RefAdaIN):
                m.bias, m.weight = params[:, m.idx, :, 0], params[:, m.idx, :, 1]
        x = self.fc_layers(content_code).reshape(-1, self.dim, self.s, self.s)
        return self.last_conv_layers(self.adain_conv_layers(x))


class RefEncoder(nn.Module):
    def __init__(self, img_shape, code_dim):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(img_shape[-1], 64, 7, stride=1, padding=3), nn.LeakyReLU(),
            nn.Conv2d(64, 128, 4, stride=2, padding=1), nn.LeakyReLU(),
            nn.Conv2d(128, 256, 4, stride=2, padding=1), nn.LeakyReLU(),
            nn.Conv2d(256, 256, 4, stride=2, padding=1), nn.LeakyReLU(),
            nn.Conv2d(256, 256, 4, stride=2, padding=1), nn.LeakyReLU())
        self.fc_layers = nn.Sequential(nn.Linear(4096, 256), nn.LeakyReLU(), nn.Linear(256, 256), nn.LeakyReLU(),
                                       nn.Linear(256, code_dim))

    def forward(self, x):
        return self.fc_layers(self.conv_layers(x).view(x.shape[0], -1))


class RefLatent(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.content_embedding = RefEmbedding(c["n_imgs"], c["content_dim"])
        self.class_embedding = nn.Embedding(c["n_classes"], c["class_dim"])
        self.modulation = RefModulation(c["class_dim"], c["n_adain_layers"], c["adain_dim"])
        self.generator = RefGenerator(c["content_dim"], c["n_adain_layers"], c["adain_dim"], c["img_shape"])

    def forward(self, img_id, class_id):
        return self.generator(self.content_embedding(img_id), self.modulation(self.class_embedding(class_id)))


class RefAmortized(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.content_encoder = RefEncoder(c["img_shape"], c["content_dim"])
        self.class_encoder = RefEncoder(c["img_shape"], c["class_dim"])
        self.modulation = RefModulation(c["class_dim"], c["n_adain_layers"], c["adain_dim"])
        self.generator = RefGenerator(c["content_dim"], c["n_adain_layers"], c["adain_dim"], c["img_shape"])

    def convert(self, content_img, class_img):
        params = self.modulation(self.class_encoder(class_img))
        return self.generator(self.content_encoder(content_img), params)


def reference_config(channels: int = 3) -> dict:
    """As the reference's lord.py builds it: data fields, then config.py's base_config (tiny sizes here)."""
    return dict(
        img_shape=(64, 64, channels), n_imgs=9, n_classes=4,
        content_dim=8, class_dim=12, content_std=1, content_decay=1e-4, n_adain_layers=3, adain_dim=16,
        perceptual_loss=dict(layers=[2, 7, 12, 21, 30]),
        train=dict(batch_size=32, n_epochs=7, learning_rate=dict(generator=3e-4, latent=3e-3, min=1e-5)),
        train_encoders=dict(batch_size=16, n_epochs=5, learning_rate=dict(max=1e-4, min=1e-5)),
    )


def write_reference_dir(path, cfg: dict, amortized: bool = True):
    torch.manual_seed(0)
    latent = RefLatent(cfg).eval()
    for p in latent.parameters():  # move away from default init so a wrong mapping cannot pass
        p.data.add_(torch.randn_like(p) * 0.02)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "config.pkl", "wb") as f:
        pickle.dump(cfg, f)
    torch.save(latent.state_dict(), path / "latent.pth")
    amort = None
    if amortized:
        amort = RefAmortized(cfg).eval()
        amort.modulation.load_state_dict(latent.modulation.state_dict())
        amort.generator.load_state_dict(latent.generator.state_dict())
        torch.save(amort.state_dict(), path / "amortized.pth")
    return latent, amort


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 1])
def test_import_reproduces_reference(tmp_path, channels: int) -> None:
    ref_cfg = reference_config(channels)
    ref_latent, ref_amort = write_reference_dir(tmp_path / "ref", ref_cfg)
    config, latent_state, amortized_state = import_reference(tmp_path / "ref")

    m = config.model
    assert (m.img_size, m.channels, m.n_imgs, m.n_classes) == (64, channels, 9, 4)
    assert (m.content_dim, m.class_dim, m.n_adain_layers, m.adain_dim, m.content_std) == (8, 12, 3, 16, 1.0)
    assert (config.latent.batch_size, config.latent.n_epochs, config.latent.lr_latent) == (32, 7, 3e-3)
    assert (config.amortized.batch_size, config.amortized.n_epochs, config.amortized.lr) == (16, 5, 1e-4)
    assert "generator.adain_conv_layers.2.conv.weight" in latent_state

    latent = LatentModel(m).eval()
    latent.load_state_dict(latent_state)
    ids, cls = torch.tensor([0, 8, 4]), torch.tensor([3, 0, 1])
    with torch.inference_mode():
        expected = ref_latent(ids, cls)
        got = latent(ids, cls)[0]
    assert got.shape == (3, channels, 64, 64)
    assert (got - expected).abs().max().item() < 1e-5

    amortized = AmortizedModel(m).eval()
    amortized.load_state_dict(amortized_state)
    torch.manual_seed(1)
    a, b = torch.rand(2, channels, 64, 64), torch.rand(2, channels, 64, 64)
    with torch.inference_mode():
        assert (transfer_net(amortized)(a, b) - ref_amort.convert(a, b)).abs().max().item() < 1e-5


def test_import_without_amortized(tmp_path) -> None:
    write_reference_dir(tmp_path / "ref", reference_config(), amortized=False)
    _, latent_state, amortized_state = import_reference(tmp_path / "ref")
    assert amortized_state is None and "content_embedding.embedding.weight" in latent_state


def test_key_mapping() -> None:
    assert map_reference_key("generator.adain_conv_layers.5.weight") == "generator.adain_conv_layers.1.conv.weight"
    assert map_reference_key("modulation.adain_per_layer.2.bias") == "modulation.adain_per_layer.2.bias"
    with pytest.raises(LordkitError):
        map_reference_key("generator.adain_conv_layers.2.weight")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_globals(tmp_path) -> None:
    for payload in (pickle.dumps(Evil()), pickle.dumps({"n": np.int64(3)}), pickle.dumps(Evil(), protocol=0)):
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            restricted_loads(payload)
    # Plain data goes through, whatever the protocol.
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert restricted_loads(pickle.dumps(reference_config(), protocol=protocol)) == reference_config()
    (tmp_path / "config.pkl").write_bytes(pickle.dumps({"cfg": Evil()}))
    with pytest.raises(LordkitError, match="posix.system|os.system|nt.system") as e:
        read_reference_config(tmp_path / "config.pkl")
    assert "\n" not in str(e.value)


def test_import_errors(tmp_path) -> None:
    with pytest.raises(LordkitError, match="not found"):
        import_reference(tmp_path / "missing")
    src = tmp_path / "ref"
    src.mkdir()
    with pytest.raises(LordkitError, match="config"):
        import_reference(src)
    cfg = reference_config()
    write_reference_dir(src, cfg, amortized=False)
    (src / "latent.pth").unlink()
    with pytest.raises(LordkitError, match="latent.pth"):
        import_reference(src)
    # Weights that do not fit the config: one line naming the key and both shapes.
    write_reference_dir(src, cfg, amortized=False)
    with open(src / "config.pkl", "wb") as f:
        pickle.dump({**cfg, "content_dim": 9}, f)
    with pytest.raises(LordkitError, match=r"content_embedding.embedding.weight has shape \(9, 8\)") as e:
        import_reference(src)
    assert "\n" not in str(e.value)
    # A config the architecture cannot take (non power-of-two size).
    with open(src / "config.pkl", "wb") as f:
        pickle.dump({**cfg, "img_shape": (48, 48, 3)}, f)
    with pytest.raises(LordkitError, match="power of two"):
        import_reference(src)


def test_cli_import_reference_writes_a_lordkit_model(tmp_path, cli, base) -> None:
    from conftest import one_line_error

    from lordkit.modeldir import load_amortized, load_latent

    ref_cfg = reference_config()
    ref_latent, ref_amort = write_reference_dir(tmp_path / "ref", ref_cfg)
    r = cli("import-reference", tmp_path / "ref", "--model-name", "imp")
    assert r.exit_code == 0, r.output
    assert "imported stage 1 and encoders" in r.stdout
    m = base / "models" / "imp"
    latent, amortized = load_latent(m), load_amortized(m)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = ref_amort.convert(x, x.flip(0))
        got, _, _ = amortized.convert(x, x.flip(0))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        ids, cls = torch.tensor([0, 5]), torch.tensor([1, 3])
        torch.testing.assert_close(latent(ids, cls)[0], ref_latent(ids, cls), atol=1e-5, rtol=0)
    assert "--force" in one_line_error(cli("import-reference", tmp_path / "ref", "--model-name", "imp"))
    assert "not found" in one_line_error(cli("import-reference", tmp_path / "nope", "--model-name", "x"))
    assert not (base / "models" / "x").exists()
