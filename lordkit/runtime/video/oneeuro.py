"""The One Euro filter (Casiez, Roussel and Vogel, CHI 2012): a low-pass filter whose cutoff rises with speed.

A still signal is smoothed hard (cutoff `min_cutoff`), so that jitter disappears; a moving one is
smoothed less (cutoff `min_cutoff + beta * speed`), so that it lags little. This version filters a
vector as one: the speed is the norm of the (smoothed) derivative, so every component gets the same
cutoff and a vector that moves as a whole is not distorted. `scale` divides that speed, which makes
`beta` independent of the units of the signal (for a face transform: pixels divided by the face size).
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff_hz: float, dt_s: float) -> float:
    """Smoothing factor of a first-order low-pass with this cutoff for a step of dt_s seconds."""
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class OneEuroFilter:
    """Filter a stream of vectors sampled at (possibly irregular) times.

    min_cutoff_hz: cutoff when the signal is still (lower: smoother and more lag).
    beta: how fast the cutoff rises with speed, per (scaled unit per second).
    d_cutoff_hz: cutoff of the low-pass on the derivative that measures the speed.
    """

    def __init__(self, min_cutoff_hz: float = 1.0, beta: float = 0.0, d_cutoff_hz: float = 1.0):
        if min_cutoff_hz <= 0 or d_cutoff_hz <= 0 or beta < 0:
            raise ValueError(f"need min_cutoff_hz > 0, d_cutoff_hz > 0 and beta >= 0, got "
                             f"{min_cutoff_hz}, {d_cutoff_hz}, {beta}")
        self.min_cutoff_hz, self.beta, self.d_cutoff_hz = float(min_cutoff_hz), float(beta), float(d_cutoff_hz)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next sample passes unchanged."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t_s: float, scale: float = 1.0) -> np.ndarray:
        """The filtered value of sample `x` taken at time `t_s` (seconds); `scale` divides the speed."""
        x = np.asarray(x, np.float64)
        if self._x is None or self._t is None or t_s <= self._t:
            # First sample, or a time that does not advance (a repeated timestamp): nothing to smooth over.
            if self._x is None or self._t is None:
                self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t_s)
                return x.copy()
            t_s = self._t + 1e-3
        dt_s = float(t_s) - self._t
        dx = (x - self._x) / dt_s
        a_d = _alpha(self.d_cutoff_hz, dt_s)
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        speed = float(np.linalg.norm(self._dx)) / max(float(scale), 1e-12)
        a = _alpha(self.min_cutoff_hz + self.beta * speed, dt_s)
        self._x = a * x + (1.0 - a) * self._x
        self._t = float(t_s)
        return self._x.copy()
