"""Collapse detection: a generator that stops depending on its content code (or on the class).

One place for all of it:
- the measure: how much generated images change with the content and with the class, over the real
  images' own pixel spread (`variation_ratios`); about 1 when outputs vary as much as the data, 0 for a
  generator that ignores that input (e.g. black for everything);
- the probes that measure it during training, on a fixed seeded set of images: stage 1 through the
  content and class tables (`LatentProbe`), stage 2 through the encoders (`EncoderProbe`);
- the decision (`CollapseWatch`): after a warm-up, the first probe below the threshold, reported
  once as a warning or, with stop_on_collapse, as `CollapseDetected` (exit 2);
- for `lordkit evaluate`: the same measure on a dataset (`collapse_ratios`) and what training
  recorded in metrics.jsonl (`training_collapse`).

The thresholds are config fields (latent.* and amortized.collapse_threshold, collapse_warmup,
stop_on_collapse); each stage builds its watch from its section (`CollapseWatch.for_stage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from lordkit.errors import LordkitError
from lordkit.modeldir import read_metrics
from lordkit.viz import sample_positions

if TYPE_CHECKING:
    from lordkit.config import AmortizedTrainConfig, LatentTrainConfig
    from lordkit.data.store import Dataset
    from lordkit.models import AmortizedModel, LatentModel

RATIOS = ("content_ratio", "class_ratio")

# What a collapse warning suggests, per stage (levers that exist as config fields).
COLLAPSE_HINTS = {
    "latent": "try --preset small (start codes from the data: latent.pca_init; an output margin that keeps "
              "the sigmoid trainable: model.output_margin; --loss lap1), a smaller model.content_std "
              "or a longer latent.noise_warmup_epochs (docs/training-recipes.md)",
    "amortized": "check stage 1's samples first (a collapsed stage 1 cannot be amortized); else try "
                 "--set amortized.centre_inputs=true (on a grey or light background) or a lower amortized.lr "
                 "(docs/training-recipes.md)",
}


class CollapseDetected(LordkitError):
    """The generator stopped depending on its content code (or class) and stop_on_collapse is set:
    a checkpoint was saved; exit 2."""

    exit_code = 2


# ----------------------------------------------------------------------------------------------
# The measure.


def pixel_spread(imgs: Tensor) -> float:
    """Mean over pixels of the per-pixel std across images: how much a set of images varies.
    imgs: (N, C, H, W) tensor in [0, 1]."""
    return float(imgs.float().std(dim=0, unbiased=False).mean())


def variation_ratios(generated: Tensor, real_spread: float) -> dict[str, float]:
    """How much generated images change with the content code and with the class, relative to the
    variation of the real images.

    generated: (n_contents, n_classes, C, H, W), image [i, j] = content i in class j. content_ratio:
    mean over classes of the per-pixel std across contents, over real_spread; class_ratio: the same
    across classes at a fixed content. Both are 0 for a generator that ignores that input (e.g. black
    for everything) and about 1 when outputs vary as much as the data."""
    g = generated.float()
    denom = max(float(real_spread), 1e-8)
    content = float(g.std(dim=0, unbiased=False).mean()) if g.shape[0] > 1 else 0.0
    cls = float(g.std(dim=1, unbiased=False).mean()) if g.shape[1] > 1 else 0.0
    return {"content_ratio": content / denom, "class_ratio": cls / denom}


PARTIAL_THRESHOLD = 0.05  # a code's output within this (over the real spread) of the zeroed code's = dead
PARTIAL_WARN_FRACTION = 0.25  # warn (after the warm-up) when this share of the probed contents is dead


def dead_fractions(generated: Tensor, zero_code_out: Tensor, real_spread: float,
                   threshold: float = PARTIAL_THRESHOLD) -> dict[str, float]:
    """A partial collapse: the share of content codes, and of classes, that the output ignores.

    generated: (n_contents, n_classes, C, H, W) as in variation_ratios; zero_code_out: (n_classes, C,
    H, W), each class drawn from an all-zero content code. A content code is dead when its images stay
    within threshold * real_spread (mean absolute pixel difference, over the classes) of the zeroed
    code's: the generator draws what it draws for no content. A class is dead when its images vary
    with the content less than threshold * real_spread (per-pixel std across contents): in that class
    everything comes out the same (often the background)."""
    g, z = generated.float(), zero_code_out.float()
    denom = max(float(real_spread), 1e-8)
    from_zero = (g - z.unsqueeze(0)).abs().mean(dim=(2, 3, 4)).mean(dim=1) / denom  # (n_contents,)
    out = {"dead_content_fraction": float((from_zero < threshold).float().mean())}
    if g.shape[0] > 1:
        within = g.std(dim=0, unbiased=False).mean(dim=(1, 2, 3)) / denom  # (n_classes,)
        out["dead_class_fraction"] = float((within < threshold).float().mean())
    return out


def transfer_ratios(model: "AmortizedModel", content_imgs: Tensor, class_imgs: Tensor,
                    real_spread: float) -> dict[str, float]:
    """The variation ratios of every content image (Kc, C, H, W) transferred into every class image
    (Kk, C, H, W) through the encoders and the generator."""
    kc, kk = len(content_imgs), len(class_imgs)
    out, _, _ = model.convert(content_imgs.repeat_interleave(kk, 0), class_imgs.repeat(kc, 1, 1, 1))
    return variation_ratios(out.reshape(kc, kk, *out.shape[1:]), real_spread)


# ----------------------------------------------------------------------------------------------
# The probes of training.


class Images(Protocol):
    """Training images by local index (lordkit.training.data.ImageBank)."""

    device: torch.device

    def batch(self, idx: Tensor) -> Tensor: ...  # (B,) -> (B, C, H, W) float in [0, 1]


def probe_set(class_ids: np.ndarray, images: Images, seed: int, n_contents: int = 16, n_classes: int = 8,
              n_spread: int = 64) -> tuple[Tensor, Tensor, float]:
    """The fixed probe of collapse detection, drawn from a bank's images (seeded): rows of n_contents
    images (their content), up to n_classes distinct class ids, and the real images' pixel spread."""
    rng = np.random.default_rng(seed + 104729)
    n = len(class_ids)
    contents = np.sort(rng.choice(n, min(n_contents, n), replace=False))
    classes = np.unique(class_ids[sample_positions(class_ids, int(class_ids.max()) + 1, n_classes, seed)])
    spread_rows = np.sort(rng.choice(n, min(n_spread, n), replace=False))
    spread = pixel_spread(images.batch(torch.from_numpy(spread_rows).to(images.device)))
    dev = images.device
    return torch.from_numpy(contents).to(dev), torch.from_numpy(classes).to(dev), spread


class LatentProbe:
    """Stage 1: the probe images' content codes (no noise) in every probed class, through the
    modulation and the generator. Calling it leaves the model in eval mode."""

    def __init__(self, model: "LatentModel", class_ids: np.ndarray, images: Images, seed: int):
        self.model = model
        self.contents, self.classes, self.real_spread = probe_set(class_ids, images, seed)

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        model = self.model
        model.eval()
        content_code = model.content_embedding(self.contents)  # (Kc, content_dim), no noise in eval
        params = model.modulation(model.class_embedding(self.classes))
        kc, kk = len(self.contents), len(self.classes)
        tiled = params.repeat(kc, *[1] * (params.dim() - 1))  # every class for each content
        out = model.generator(content_code.repeat_interleave(kk, 0), tiled)  # (Kc*Kk, C, H, W)
        zero = model.generator(torch.zeros_like(content_code[:1]).expand(kk, -1), params)  # (Kk, C, H, W)
        grid = out.reshape(kc, kk, *out.shape[1:])
        return {**variation_ratios(grid, self.real_spread), **dead_fractions(grid, zero, self.real_spread)}


class EncoderProbe:
    """Stage 2: contents from the probe images, classes from one fixed image of each probed class,
    through the encoders and the generator. Calling it leaves the model in eval mode."""

    def __init__(self, model: "AmortizedModel", class_ids: np.ndarray, images: Images, seed: int):
        self.model, self.images = model, images
        self.content_rows, classes, self.real_spread = probe_set(class_ids, images, seed)
        self.class_rows = torch.from_numpy(np.array([int(np.flatnonzero(class_ids == c)[0])
                                                     for c in classes.tolist()])).to(images.device)

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        self.model.eval()
        content_imgs, class_imgs = self.images.batch(self.content_rows), self.images.batch(self.class_rows)
        return transfer_ratios(self.model, content_imgs, class_imgs, self.real_spread)


# ----------------------------------------------------------------------------------------------
# The decision.


class CollapseWatch:
    """Decides, from the variation ratios of successive probes, when a stage has collapsed: after
    warmup_epochs, the first probe whose content ratio (or class ratio, where several classes were
    probed) is below threshold. Reports once. `probe` measures the ratios; `stop` asks the training
    loop to stop with CollapseDetected instead of warning."""

    def __init__(self, stage: str, threshold: float, warmup_epochs: float, *,
                 probe: Callable[[], dict[str, float]] | None = None, stop: bool = False):
        self.stage, self.threshold, self.warmup_epochs = stage, threshold, warmup_epochs
        self.probe, self.stop = probe, stop
        self.event: dict[str, Any] | None = None
        self.partial: dict[str, Any] | None = None  # the first partial collapse seen (dead codes or classes)

    @classmethod
    def for_stage(cls, stage: str, cfg: "LatentTrainConfig | AmortizedTrainConfig",
                  probe: Callable[[], dict[str, float]]) -> CollapseWatch:
        """The watch of a stage's config section: its threshold, its warm-up fraction of n_epochs, stop_on_collapse."""
        return cls(stage, cfg.collapse_threshold, cfg.collapse_warmup * cfg.n_epochs, probe=probe,
                   stop=cfg.stop_on_collapse)

    def check(self, ratios: dict[str, float], epoch: float) -> dict[str, Any] | None:
        """The collapse event (once, the first time), else None."""
        if self.event is not None or epoch < self.warmup_epochs or self.threshold <= 0:
            return None
        low = [k for k in RATIOS if k in ratios and ratios[k] < self.threshold]
        if not low:
            return None
        self.event = {"epoch": epoch, "threshold": self.threshold, "below": low, **ratios}
        return self.event

    def check_partial(self, ratios: dict[str, float], epoch: float) -> str | None:
        """A one-time warning line when, after the warm-up, at least PARTIAL_WARN_FRACTION of the
        probed content codes, or any probed class, is dead (dead_fractions); else None. A full
        collapse (check) says more and takes precedence."""
        if self.partial is not None or self.event is not None or epoch < self.warmup_epochs:
            return None
        codes, classes = ratios.get("dead_content_fraction", 0.0), ratios.get("dead_class_fraction", 0.0)
        if codes < PARTIAL_WARN_FRACTION and classes <= 0:
            return None
        self.partial = {"epoch": epoch, "dead_content_fraction": codes, "dead_class_fraction": classes}
        return (f"{self.stage} stage partly collapsed at epoch {epoch:.0f}: {codes:.0%} of the probed content codes "
                f"give what a zeroed code gives and {classes:.0%} of the probed classes come out the same for every "
                f"content (threshold {PARTIAL_THRESHOLD} of the data's spread); {COLLAPSE_HINTS.get(self.stage, '')}")

    def message(self) -> str:
        """One line: what collapsed, the numbers, and what to try."""
        e = self.event or {}
        what = " and ".join({"content_ratio": "the content code", "class_ratio": "the class"}[k] for k in e["below"])
        nums = ", ".join(f"{k.replace('_', ' ')} {e[k]:.3f}" for k in RATIOS if k in e)
        return (f"{self.stage} stage collapsed at epoch {e['epoch']:.0f}: the generator's output barely changes with "
                f"{what} ({nums}; threshold {self.threshold}); {COLLAPSE_HINTS.get(self.stage, '')}")

    def stopped(self, step: int, checkpoint: Path) -> CollapseDetected:
        """The error of a run stopped on a collapse (seen here or, under torchrun, on another rank)."""
        msg = self.message() if self.event else f"{self.stage} stage collapsed on another rank"
        return CollapseDetected(f"{msg}; stopped (stop_on_collapse) with a checkpoint at step {step} in {checkpoint}")


# ----------------------------------------------------------------------------------------------
# For `lordkit evaluate`.


def _to_tensor(imgs: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.array(imgs)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def collapse_ratios(model: "AmortizedModel", ds: "Dataset", device: torch.device, threshold: float,
                    n_contents: int = 16, n_classes: int = 8, seed: int = 0) -> dict[str, Any]:
    """The variation ratios of the trained encoders + generator on ds (as training probes them), and
    whether they are below the collapse threshold."""
    rng = np.random.default_rng(seed + 2)
    class_ids = np.asarray(ds.class_ids)
    contents = np.sort(rng.choice(len(ds), min(n_contents, len(ds)), replace=False))
    class_rows = sample_positions(class_ids, ds.n_classes, n_classes, seed)
    class_rows = class_rows[np.unique(class_ids[class_rows], return_index=True)[1]]  # one image per class
    spread_rows = np.sort(rng.choice(len(ds), min(256, len(ds)), replace=False))
    spread = pixel_spread(_to_tensor(ds.images[spread_rows], device))
    xc, xk = _to_tensor(ds.images[contents], device), _to_tensor(ds.images[np.sort(class_rows)], device)
    ratios = transfer_ratios(model, xc, xk, spread)
    below = [k for k, v in ratios.items() if v < threshold and not (k == "class_ratio" and len(xk) < 2)]
    return {**ratios, "threshold": threshold, "collapsed": bool(below and threshold > 0)}


def training_collapse(model_dir: Path) -> dict[str, Any]:
    """Per stage: the last probed ratios and the collapse event (None if none) from metrics.jsonl."""
    out: dict[str, Any] = {}
    for row in read_metrics(model_dir):
        stage = row.get("stage")
        if stage is None or "content_ratio" not in row:
            continue
        entry = out.setdefault(stage, {"collapse": None})
        entry.update({"epoch": row.get("epoch"), "content_ratio": row["content_ratio"],
                      "class_ratio": row.get("class_ratio")})
        if row.get("event") == "collapse" and entry["collapse"] is None:
            entry["collapse"] = {"epoch": row.get("epoch"), "step": row.get("step"),
                                 "content_ratio": row["content_ratio"], "class_ratio": row.get("class_ratio")}
    return out


def collapse_report(model: "AmortizedModel", ds: "Dataset", device: torch.device, threshold: float,
                    model_dir: Path, seed: int = 0) -> dict[str, Any]:
    """The "collapse" section of an evaluation: the ratios on ds, the verdict, and what training recorded."""
    return {**collapse_ratios(model, ds, device, threshold, seed=seed), "training": training_collapse(model_dir)}
