"""The One Euro filter: still signals are smoothed hard, moving ones followed with little lag."""

import numpy as np
import pytest

from lordkit.runtime.video.oneeuro import OneEuroFilter

RATE_HZ = 25.0


def run(f: OneEuroFilter, xs: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return np.array([f(x, k / RATE_HZ, scale) for k, x in enumerate(xs)])


def test_first_sample_passes_and_reset_forgets():
    f = OneEuroFilter(1.0, 0.0)
    assert np.allclose(f(np.array([3.0, 4.0]), 0.0), [3.0, 4.0])
    assert not np.allclose(f(np.array([5.0, 4.0]), 0.04), [5.0, 4.0])  # smoothed towards the past
    f.reset()
    assert np.allclose(f(np.array([5.0, 4.0]), 0.08), [5.0, 4.0])


def test_a_still_noisy_signal_is_smoothed():
    rng = np.random.default_rng(0)
    xs = 100.0 + rng.normal(0, 1.0, (200, 4))
    out = run(OneEuroFilter(0.5, 4.0), xs, scale=100.0)
    raw_motion = np.sqrt((np.diff(xs, axis=0) ** 2).sum(1).mean())
    smooth_motion = np.sqrt((np.diff(out[20:], axis=0) ** 2).sum(1).mean())
    assert smooth_motion < raw_motion / 5
    assert np.abs(out[20:].mean(0) - 100.0).max() < 0.5  # no bias


def test_a_ramp_is_followed_and_beta_cuts_the_lag():
    xs = np.stack([np.arange(100) * 2.0, np.zeros(100)], 1)  # 50 px/s at 25 Hz
    lag = {beta: xs[-1, 0] - run(OneEuroFilter(0.5, beta), xs, scale=100.0)[-1, 0] for beta in (0.0, 4.0)}
    # With beta 0 it is a first-order low-pass: a ramp lags by speed x dt x (1 - a) / a = speed x tau.
    tau_s = 1 / (2 * np.pi * 0.5)
    assert lag[0.0] == pytest.approx(50.0 * tau_s, rel=0.01)
    assert 0 < lag[4.0] < lag[0.0] / 5  # the cutoff rose with the speed


def test_irregular_and_repeated_times():
    f = OneEuroFilter(1.0, 0.0)
    f(np.array([0.0]), 0.0)
    a = f(np.array([10.0]), 0.01)[0]
    f.reset()
    f(np.array([0.0]), 0.0)
    b = f(np.array([10.0]), 0.5)[0]
    assert 0 < a < b < 10  # a longer gap moves further towards the new value
    assert np.isfinite(f(np.array([10.0]), 0.5)).all()  # a repeated time does not divide by zero


def test_bad_parameters():
    with pytest.raises(ValueError):
        OneEuroFilter(0.0)
    with pytest.raises(ValueError):
        OneEuroFilter(1.0, beta=-1.0)
