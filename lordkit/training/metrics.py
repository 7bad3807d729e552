"""Append-only metrics.jsonl in the model dir, and TensorBoard scalars and images beside it; the
decision that a stage has collapsed (from lordkit.evaluation's variation ratios)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lordkit.modeldir import METRICS

# What a collapse warning suggests, per stage (levers that exist as config fields).
COLLAPSE_HINTS = {
    "latent": "try --preset small (start codes from the data: latent.pca_init; an output margin that keeps "
              "the sigmoid trainable: model.output_margin; --loss l1+l2), a smaller model.content_std "
              "or a longer latent.noise_warmup_epochs (docs/training-recipes.md)",
    "amortized": "check stage 1's samples first (a collapsed stage 1 cannot be amortized); else try "
                 "a lower amortized.lr (docs/training-recipes.md)",
}


class CollapseWatch:
    """Decides, from the variation ratios of successive probes, when a stage has collapsed: after
    warmup_epochs, the first probe whose content ratio (or class ratio, where several classes were
    probed) is below threshold. Reports once."""

    def __init__(self, stage: str, threshold: float, warmup_epochs: float):
        self.stage, self.threshold, self.warmup_epochs = stage, threshold, warmup_epochs
        self.event: dict[str, Any] | None = None

    def check(self, ratios: dict[str, float], epoch: float) -> dict[str, Any] | None:
        """The collapse event (once, the first time), else None."""
        if self.event is not None or epoch < self.warmup_epochs or self.threshold <= 0:
            return None
        low = [k for k in ("content_ratio", "class_ratio") if k in ratios and ratios[k] < self.threshold]
        if not low:
            return None
        self.event = {"epoch": epoch, "threshold": self.threshold, "below": low, **ratios}
        return self.event

    def message(self) -> str:
        """One line: what collapsed, the numbers, and what to try."""
        e = self.event or {}
        what = " and ".join({"content_ratio": "the content code", "class_ratio": "the class"}[k] for k in e["below"])
        nums = ", ".join(f"{k.replace('_', ' ')} {e[k]:.3f}" for k in ("content_ratio", "class_ratio") if k in e)
        return (f"{self.stage} stage collapsed at epoch {e['epoch']:.0f}: the generator's output barely changes with "
                f"{what} ({nums}; threshold {self.threshold}); {COLLAPSE_HINTS.get(self.stage, '')}")


class MetricsLog:
    """One JSON object per logged step, appended to metrics.jsonl (+ TensorBoard when it is installed)."""

    def __init__(self, model_dir: Path, stage: str, tensorboard: bool = True):
        self.path = model_dir / METRICS
        self.stage = stage
        self.tb = None
        if tensorboard:
            with contextlib.suppress(ImportError, ModuleNotFoundError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(model_dir / "tensorboard" / stage))

    def write(self, record: dict[str, Any]) -> None:
        record = {"stage": self.stage, **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{self.stage}/{k}", v, record["step"])

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(f"{self.stage}/{tag}", img, step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
