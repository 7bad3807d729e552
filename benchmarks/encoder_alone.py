"""A stage-2 encoder trained alone on a trained stage-1 model: its squared error against the stage-1
codes of the training images, epoch by epoch, with the images as they are and with their mean colour
subtracted (amortized.centre_inputs: the encoder built with the model's encoder_input_mean, as stage 2
builds it), side by side in one process from the same initial weights.

Nothing else of stage 2 is there (no generator, no reconstruction, no class swap): the encoder's
architecture from the model's config, Adam at --lr with stage 2's betas, batches of --batch images
drawn at random, seeded. A check evaluates every training image. The table is printed, and the run
appended as one JSON line to benchmarks/results/encoder_alone.jsonl (benchmarks/_results.py;
LORDKIT_RESULTS_DIR=DIR elsewhere).

    python benchmarks/encoder_alone.py --model-dir W/models/outline-hue-mid-grey \\
        --data W/data/outline-hue-mid-grey-train                       # the class encoder, 111 epochs
    python benchmarks/encoder_alone.py --model-dir M --data D --encoder content --epochs 20 --check-every 5
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lordkit.data.store import Dataset
from lordkit.errors import LordkitError
from lordkit.models import Encoder
from lordkit.modeldir import load_config, load_latent
from lordkit.training.amortized import channel_means
from lordkit.training.data import ImageBank

FORMS = ("plain", "centred")


def targets(model_dir: Path, ds: Dataset, encoder: str) -> tuple[torch.Tensor, Any]:
    """(codes the encoder must give for every training image, the model's config)."""
    cfg = load_config(model_dir)
    latent = load_latent(model_dir, cfg)
    if cfg.model.n_imgs != len(ds):
        raise LordkitError(f"{model_dir} was trained on {cfg.model.n_imgs:,} images, the data has {len(ds):,}")
    with torch.no_grad():
        if encoder == "class":
            return latent.class_embedding(torch.from_numpy(np.asarray(ds.class_ids)).long()).float(), cfg
        return latent.content_embedding(torch.arange(len(ds))).float(), cfg


def run(model_dir: Path, data: Path, encoder: str = "class", epochs: int = 111, check_every: int = 11,
        lr: float = 1e-3, batch: int = 16, seed: int = 0) -> dict[str, Any]:
    ds = Dataset(data)
    target, cfg = targets(model_dir, ds, encoder)
    images = ImageBank(ds, torch.device("cpu")).batch(torch.arange(len(ds)))
    means = tuple(channel_means(ds))
    steps_per_epoch = max(1, len(ds) // batch)
    checks = sorted({e for e in range(0, epochs + 1, check_every)} | {epochs})
    curves: dict[str, list[float]] = {}
    for form in FORMS:
        torch.manual_seed(seed)
        # The centred form is the encoder stage 2 builds under amortized.centre_inputs: it subtracts the mean.
        mean = means if form == "centred" else ()
        net = Encoder(dataclasses.replace(cfg.model, encoder_input_mean=mean), target.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(cfg.amortized.betas))
        g = torch.Generator().manual_seed(seed)
        curve = []
        for epoch in range(epochs + 1):
            if epoch in checks:
                with torch.no_grad():
                    curve.append(float((net.eval()(images) - target).pow(2).mean()))
                net.train()
            if epoch == epochs:
                break
            for _ in range(steps_per_epoch):
                idx = torch.randint(0, len(ds), (batch,), generator=g)
                loss = (net(images[idx]) - target[idx]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        curves[form] = curve
    spread = float((target - target.mean(0)).pow(2).mean())  # the error of giving every image the mean code
    return {"model_dir": str(model_dir), "data": str(data), "encoder": encoder, "n_imgs": len(ds),
            "mean": list(means), "mean_code_error": spread, "epochs": checks, **curves}


def main(argv: list[str] | None = None, *, record: bool = False) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True, help="A model dir with a trained stage 1.")
    ap.add_argument("--data", type=Path, required=True, help="The dataset dir stage 1 was trained on.")
    ap.add_argument("--encoder", choices=("class", "content"), default="class")
    ap.add_argument("--epochs", type=int, default=111)
    ap.add_argument("--check-every", type=int, default=11, help="Epochs between checks (and the last epoch).")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (the small preset's stage 2).")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if min(args.epochs, args.check_every, args.batch, args.threads) < 1 or not (math.isfinite(args.lr) and args.lr > 0):
        ap.error("--epochs, --check-every, --batch and --threads must be >= 1, --lr a number > 0")
    torch.set_num_threads(args.threads)
    try:
        figures = run(args.model_dir, args.data, args.encoder, args.epochs, args.check_every, args.lr, args.batch,
                      args.seed)
    except LordkitError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{args.encoder} encoder alone on {figures['n_imgs']:,} images; the mean code's error "
          f"{figures['mean_code_error']:.4f}; mean colour {', '.join(f'{v:.3f}' for v in figures['mean'])}")
    print("| epoch | plain | centred |")
    print("|---|---|---|")
    for i, epoch in enumerate(figures["epochs"]):
        print(f"| {epoch} | {figures['plain'][i]:.4f} | {figures['centred'][i]:.4f} |")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('encoder_alone', figures, args=args, argv=argv)}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:], record=True)
