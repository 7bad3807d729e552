"""Stage 2's class swap (amortized.swap_weight): the stage-1 generator draws each content in a random
class and the encoders must give both codes back from that image."""

import contextlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lordkit.config import ConfigError
from lordkit.training import TrainingInterrupted, train_amortized, train_latent
from lordkit.training.amortized import class_swap_terms
from test_training import data, interrupt_at, metrics, quiet, tiny_cfg  # noqa: F401  (data: a fixture)


class _CodeImageLatent(nn.Module):
    """A stand-in stage-1 model whose 'image' spells out its codes: row 0 the content code, row 1 the
    class code (so an encoder can read back exactly what was drawn)."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.class_embedding = nn.Embedding(n_classes, dim)
        self.modulation = nn.Identity()

    def generator(self, content: torch.Tensor, class_code: torch.Tensor) -> torch.Tensor:
        return torch.stack([content, class_code], 1)[:, None]  # (B, 1, 2, dim)


class _Reader(nn.Module):
    def __init__(self, row: int, offset: float = 0.0):
        super().__init__()
        self.row, self.offset = row, offset

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return img[:, 0, self.row] + self.offset


class _Encoders(nn.Module):
    def __init__(self, content_offset: float = 0.0, class_offset: float = 0.0):
        super().__init__()
        self.content_encoder, self.class_encoder = _Reader(0, content_offset), _Reader(1, class_offset)


def test_the_terms_compare_each_code_with_the_one_its_image_was_drawn_from():
    torch.manual_seed(0)
    latent = _CodeImageLatent(n_classes=5, dim=4)
    content = torch.randn(64, 4)
    cast = contextlib.nullcontext
    exact = class_swap_terms(latent, _Encoders(), content, 5, cast)
    assert exact[0].item() == 0 and exact[1].item() == 0  # both codes read back from the drawn image
    off = class_swap_terms(latent, _Encoders(content_offset=0.5, class_offset=-2.0), content, 5, cast)
    assert off[0].item() == pytest.approx(0.25) and off[1].item() == pytest.approx(4.0)


def test_the_classes_are_drawn_at_random_over_every_class():
    torch.manual_seed(0)
    latent = _CodeImageLatent(n_classes=3, dim=3)
    with torch.no_grad():
        latent.class_embedding.weight.copy_(torch.eye(3))
    seen = []

    class Spy:
        content_encoder = _Reader(0)

        @staticmethod
        def class_encoder(img):
            seen.append(img[:, 0, 1].argmax(1))
            return img[:, 0, 1]

    class_swap_terms(latent, Spy(), torch.zeros(3000, 3), 3, contextlib.nullcontext)
    counts = np.bincount(seen[0].numpy(), minlength=3)
    assert counts.min() > 900  # about 1000 each


def test_gradient_reaches_the_encoders_only():
    latent = _CodeImageLatent(n_classes=4, dim=4)

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.content_encoder = nn.Sequential(nn.Flatten(), nn.Linear(8, 4))
            self.class_encoder = nn.Sequential(nn.Flatten(), nn.Linear(8, 4))

    model = Linear()
    a, b = class_swap_terms(latent, model, torch.randn(8, 4), 4, contextlib.nullcontext)
    (a + b).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert latent.class_embedding.weight.grad is None


def test_a_negative_or_infinite_weight_is_refused():
    for value in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="swap_weight must be finite and >= 0"):
            tiny_cfg(f"amortized.swap_weight={value}")


def test_stage_two_with_the_swap_logs_its_terms_and_resumes_to_the_same_weights(data, tmp_path):  # noqa: F811
    cfg = tiny_cfg("latent.n_epochs=3", "amortized.swap_weight=1")
    for name in ("a", "b"):
        train_latent(data, tmp_path / name, cfg, **quiet())
    before = (tmp_path / "a" / "latent.safetensors").read_bytes()
    train_amortized(data, tmp_path / "a", changes={"n_epochs": 3}, **quiet())
    rows = metrics(tmp_path / "a", "amortized")
    assert rows and all(np.isfinite(r["swap_content_mse"]) and np.isfinite(r["swap_class_mse"]) for r in rows)
    assert (tmp_path / "a" / "latent.safetensors").read_bytes() == before  # stage 1 only draws
    # Interrupted and resumed: the random classes continue where they were (the RNG is checkpointed).
    with pytest.raises(TrainingInterrupted):
        train_amortized(data, tmp_path / "b", changes={"n_epochs": 3}, **quiet(on_step=interrupt_at(3)))
    train_amortized(data, tmp_path / "b", resume=True, **quiet())
    a = load_file(tmp_path / "a" / "amortized.safetensors")
    b = load_file(tmp_path / "b" / "amortized.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
