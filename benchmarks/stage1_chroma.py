"""Does stage 1 draw the images' hues? Stage 1 of the small preset alone on a dataset, for a time
budget (or a number of epochs), then every training image reconstructed from its own codes: the
share of the images' chroma the reconstructions keep, sum(chroma(out) . chroma(img)) / sum(|chroma(img)|^2)
over every pixel, chroma being the two opponent axes of lordkit.losses (grey pixels have none).
1 = every hue drawn, 0 = drawn in grey (the dark-grey failure of docs/training-recipes.md). On a
synthetic family variant with hue as a content factor it also reports how well the trained content
codes' hue pair (their last two dimensions) and the other dimensions tell each image's hue
(lordkit.evaluation.leakage: 5-fold cross-validated MLP accuracy, against chance): whether a grey
result comes from codes that lost the hue or from a generator that does not read it.

    python benchmarks/stage1_chroma.py --data W/data/outline-hue-train --work /tmp/c --seconds 200 \\
        --set latent.pca_blur=0.25
    python benchmarks/stage1_chroma.py --data D --work /tmp/c --seconds 200 --hue-gain 6 --set latent.pca_blur=0.25

--hue-gain sets the start codes' hue pair scale (lordkit.training.init.HUE_GAIN, 3 as shipped) for
this run. Run as a script, it appends the run to benchmarks/results/stage1_chroma.jsonl
(benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR elsewhere).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lordkit.training.init as init
from lordkit.config import fit_to_images, fit_to_length, preset
from lordkit.data.datasets.synthetic import FACTORS, content_factors_of
from lordkit.data.sources import dataset_ids
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError
from lordkit.evaluation import leakage
from lordkit.losses import OPPONENT
from lordkit.modeldir import load_config, load_latent
from lordkit.training import train_latent


def chroma_sums(images: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(sum of chroma(out) . chroma(images), sum of |chroma(images)|^2) over every pixel of (n, 3, h, w)
    images in [0, 1]: their ratio is the share of the images' chroma that out keeps."""
    axes = torch.tensor(OPPONENT, dtype=torch.float32)
    a, b = (torch.einsum("nchw,kc->nkhw", t.float(), axes) for t in (images, out))
    return float((a * b).sum()), float((a * a).sum())


def run(data: Path, work: Path, seconds: float | None, epochs: int | None, hue_gain: float,
        overrides: list[str]) -> dict[str, Any]:
    ds = Dataset(data)
    if ds.meta.channels != 3:
        raise LordkitError(f"{data} has one channel: no hue to measure")
    cfg = fit_to_length(preset("small", known=dataset_ids()), "small", len(ds))[0].apply_overrides(overrides)
    cfg = fit_to_images(cfg, ds.meta.img_size, ds.meta.channels)
    if epochs:
        cfg = cfg.replace(latent={"n_epochs": epochs})
    shipped, init.HUE_GAIN = init.HUE_GAIN, hue_gain
    try:
        train_latent(ds, work, cfg, data_name=data.name, force=True, budget_start=time.monotonic(),
                     time_budget_s=seconds, announce=lambda plan: None, show_progress=False, tensorboard=False,
                     device="cpu")
    finally:
        init.HUE_GAIN = shipped
    cfg = load_config(work)
    model = load_latent(work, cfg).eval()
    kept, total = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(ds), 256):
            rows = np.arange(start, min(start + 256, len(ds)))
            out, _, _ = model(torch.from_numpy(rows), torch.from_numpy(np.asarray(ds.class_ids)[rows]).long())
            imgs = torch.from_numpy(np.array(ds.images[start:start + len(rows)])).permute(0, 3, 1, 2).float() / 255
            k, t = chroma_sums(imgs, out)
            kept, total = kept + k, total + t
    figures = {"data": str(data), "n_imgs": len(ds), "epochs": cfg.latent.n_epochs, "hue_gain": hue_gain,
               "overrides": overrides, "chroma_kept": kept / max(total, 1e-12)}
    hues = hue_levels(ds)
    if hues is not None and cfg.latent.pca_features == "colour" and cfg.latent.pca_init > 0 and (
            cfg.model.content_dim > 2 and init.hue_pairs(ds, np.asarray(ds.class_ids), ds.n_classes) is not None):
        # the start codes' last two dimensions were the hue pair (lordkit.training.init.pca_content_codes)
        codes = model.content_embedding.embedding.weight.detach().double().numpy()
        pair, rest = (leakage(c, hues, n_repeats=1) for c in (codes[:, -2:], codes[:, :-2]))
        figures["hue_from_codes"] = {"pair": pair["accuracy"], "other_dims": rest["accuracy"],
                                     "chance": pair["chance"]}
    return figures


def hue_levels(ds: Dataset) -> np.ndarray | None:
    """Each image's hue level where the set is a synthetic variant with hue as a content factor."""
    grid = (ds.meta.extra or {}).get("content_grid") or {}
    if not ds.has_content_labels or int(grid.get("hue", 1)) < 2:
        return None
    grid = {f: int(grid[f]) for f in FACTORS}
    return np.array([content_factors_of(int(c), grid)[FACTORS.index("hue")] for c in ds.content_ids])


def main(argv: list[str] | None = None, *, record: bool = False) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="A colour dataset dir (e.g. a family variant's split).")
    ap.add_argument("--work", type=Path, required=True, help="The model dir stage 1 writes (replaced).")
    length = ap.add_mutually_exclusive_group(required=True)
    length.add_argument("--seconds", type=float, help="Stage 1's time budget.")
    length.add_argument("--epochs", type=int, help="Stage 1's epochs, without a budget.")
    ap.add_argument("--hue-gain", type=float, default=init.HUE_GAIN, help="The hue pair's scale (shipped: 3).")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch threads.")
    args = ap.parse_args(argv)
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        ap.error("--seconds must be a number > 0")
    if (args.epochs is not None and args.epochs < 1) or args.threads < 1 or not (
            math.isfinite(args.hue_gain) and args.hue_gain > 0):
        ap.error("--epochs and --threads must be >= 1, --hue-gain a number > 0")
    torch.set_num_threads(args.threads)
    try:
        figures = run(args.data, args.work, args.seconds, args.epochs, args.hue_gain, args.overrides)
    except (LordkitError, OSError) as e:  # OSError: a --work or --data path that cannot be used
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{args.data.name}: {figures['epochs']} epochs, hue gain {args.hue_gain:g}, "
          f"{' '.join(args.overrides) or 'the preset'}: chroma kept {figures['chroma_kept']:.2f}")
    if "hue_from_codes" in figures:
        h = figures["hue_from_codes"]
        print(f"hue told by the codes' hue pair {h['pair']:.0%}, by their other dimensions {h['other_dims']:.0%} "
              f"(chance {h['chance']:.0%})")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('stage1_chroma', figures, args=args, argv=argv)}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:], record=True)
