"""Append-only metrics.jsonl in the model dir, and TensorBoard scalars and images beside it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lordkit.modeldir import metrics_path, tensorboard_dir


class MetricsLog:
    """One JSON object per logged step, appended to metrics.jsonl (+ TensorBoard when it is installed)."""

    def __init__(self, model_dir: Path, stage: str, tensorboard: bool = True):
        self.path = metrics_path(model_dir)
        self.stage = stage
        self.tb = None
        if tensorboard:
            with contextlib.suppress(ImportError, ModuleNotFoundError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tensorboard_dir(model_dir, stage)))

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
