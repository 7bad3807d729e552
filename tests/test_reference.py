"""Import of a model dir written by the public PyTorch re-implementation.

The reference's formulation (lordkit.bench.reference: same module names and layouts, AdaIN parameters
assigned onto modules before the forward as it does) writes a fake reference dir, compared with
lordkit's models loaded from the import.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from lordkit.bench.reference import RefAmortized, RefLatent
from lordkit.errors import LordkitError
from lordkit.models import AmortizedModel, LatentModel, transfer_net
from lordkit.reference import config_from_reference, import_reference, map_reference_key, read_reference_config, restricted_loads

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
    model_cfg = config_from_reference(cfg).model
    latent = RefLatent(model_cfg).eval()
    for p in latent.parameters():  # move away from default init so a wrong mapping cannot pass
        p.data.add_(torch.randn_like(p) * 0.02)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "config.pkl", "wb") as f:
        pickle.dump(cfg, f)
    torch.save(latent.state_dict(), path / "latent.pth")
    amort = None
    if amortized:
        amort = RefAmortized(model_cfg).eval()
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
        expected = ref_latent(ids, cls)[0]
        got = latent(ids, cls)[0]
    assert got.shape == (3, channels, 64, 64)
    assert (got - expected).abs().max().item() < 1e-5

    amortized = AmortizedModel(m).eval()
    amortized.load_state_dict(amortized_state)
    torch.manual_seed(1)
    a, b = torch.rand(2, channels, 64, 64), torch.rand(2, channels, 64, 64)
    with torch.inference_mode():
        assert (transfer_net(amortized)(a, b) - ref_amort.convert(a, b)[0]).abs().max().item() < 1e-5


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
        want = ref_amort.convert(x, x.flip(0))[0]
        got, _, _ = amortized.convert(x, x.flip(0))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        ids, cls = torch.tensor([0, 5]), torch.tensor([1, 3])
        torch.testing.assert_close(latent(ids, cls)[0], ref_latent(ids, cls)[0], atol=1e-5, rtol=0)
    assert "--force" in one_line_error(cli("import-reference", tmp_path / "ref", "--model-name", "imp"))
    assert "not found" in one_line_error(cli("import-reference", tmp_path / "nope", "--model-name", "x"))
    assert not (base / "models" / "x").exists()
