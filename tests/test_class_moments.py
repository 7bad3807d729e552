"""latent.class_moments: a stage-1 term that pulls every class's content codes to one mean and covariance."""

import numpy as np
import pytest
import torch

from lordkit.config import ConfigError
from lordkit.losses import class_moment_penalty
from lordkit.training import train_latent
from test_training import data, metrics, quiet, tiny_cfg  # noqa: F401  (the module's dataset fixture)


def _table(shift: float, spread: float, n_per_class: int = 200, dim: int = 4, seed: int = 0):
    """Codes of two classes: class 1's shifted by `shift` and stretched by `spread` along dimension 0."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * n_per_class, dim, generator=g)
    y = torch.arange(2).repeat_interleave(n_per_class)
    z[y == 1, 0] = z[y == 1, 0] * spread + shift
    return z, y


def test_the_penalty_is_near_zero_for_one_shared_distribution_and_grows_with_the_class_difference():
    values = []
    for shift, spread in [(0.0, 1.0), (0.5, 1.0), (2.0, 1.0), (0.0, 3.0)]:
        z, y = _table(shift, spread)
        idx = torch.arange(0, len(z), 25)
        values.append(float(class_moment_penalty(z[idx], idx, z, y)))
    same, small_shift, large_shift, stretched = values
    assert same < 0.1
    assert same < small_shift < large_shift
    assert stretched > 10 * same


def test_the_penalty_does_not_fall_by_shrinking_the_codes():
    z, y = _table(2.0, 1.0)
    idx = torch.arange(0, len(z), 25)
    a = class_moment_penalty(z[idx], idx, z, y)
    b = class_moment_penalty(z[idx] * 0.01, idx, z * 0.01, y)
    assert torch.allclose(a, b, rtol=1e-4)


def test_only_the_batch_codes_get_a_gradient_and_it_moves_them_towards_the_shared_mean():
    z, y = _table(2.0, 1.0)
    table = z.clone().requires_grad_(True)
    idx = torch.tensor([0, 1, 250, 399])
    live = table[idx]
    class_moment_penalty(live, idx, table, y).backward()
    grad = table.grad
    outside = torch.ones(len(z), dtype=torch.bool)
    outside[idx] = False
    assert grad[outside].abs().max() == 0
    assert grad[idx].abs().sum() > 0
    # Class 1 sits at +2 along dimension 0: descending the gradient moves its codes down there.
    assert (grad[idx[2:], 0] > 0).all()


def test_a_sampled_reference_gives_about_the_full_tables_value():
    z, y = _table(1.0, 2.0, n_per_class=3000)
    idx = torch.arange(0, len(z), 97)
    full = class_moment_penalty(z[idx], idx, z, y)
    ref = torch.randint(len(z), (2048,), generator=torch.Generator().manual_seed(1))
    sampled = class_moment_penalty(z[idx], idx, z, y, ref)
    assert abs(float(sampled) - float(full)) < 0.25 * float(full)


def test_a_batch_of_single_codes_per_class_gives_zero_not_nan():
    z = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    idx = torch.tensor([0])
    assert float(class_moment_penalty(z[idx], idx, z, y)) == 0.0


def test_class_moments_is_validated_and_off_by_default():
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="class_moments must be a finite number >= 0"):
            tiny_cfg(f"latent.class_moments={bad}")
    assert tiny_cfg().latent.class_moments == 0.0


def _moment_gap(z, y):
    """Distance of class 1's mean and covariance from class 0's, in units of the codes' variance."""
    a, b = z[y == 0], z[y == 1]
    scale = z.var(0).mean()
    return float((a.mean(0) - b.mean(0)).norm() / scale.sqrt()), float((a.T.cov() - b.T.cov()).norm() / scale)


def test_descending_the_penalty_batch_by_batch_gives_the_classes_one_mean_and_covariance():
    """Codes of two classes that differ in mean and spread: minimising the term alone, one batch of
    rows at a time as stage 1 updates its table (Adam at the code learning rate), brings the classes'
    means and covariances together (which is what a linear read-out of the class would use)."""
    z, y = _table(2.0, 3.0)
    mean_gap, cov_gap = _moment_gap(z, y)
    table = torch.nn.Parameter(z.clone())
    opt = torch.optim.Adam([table], lr=3e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randperm(len(z), generator=g)[:32]
        loss = class_moment_penalty(table[idx], idx, table, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mean_after, cov_after = _moment_gap(table.detach(), y)
    assert mean_gap > 0.9 and cov_gap > 1.5
    assert mean_after < 0.1 * mean_gap and cov_after < 0.1 * cov_gap, (mean_gap, cov_gap, mean_after, cov_after)


def test_stage_one_logs_the_term_only_when_it_is_on(data, tmp_path):  # noqa: F811
    for weight in (0, 3):
        m = tmp_path / f"m{weight}"
        train_latent(data, m, tiny_cfg("latent.n_epochs=2", f"latent.class_moments={weight}"), **quiet())
        rows = [r for r in metrics(m, "latent") if "rec" in r]
        assert rows and all(("moments" in r) == (weight > 0) for r in rows)
        assert all(np.isfinite(r["moments"]) for r in rows if "moments" in r)
