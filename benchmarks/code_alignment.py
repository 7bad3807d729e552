"""Do content codes mean the same in every class? For each image of a synthetic family variant, the
nearest content code among another class's images, and how far that image's content factors are
from its own (grid steps, averaged over every image and every other class): 0 = each content's
nearest code elsewhere is the same content; larger = codes that mean different things per class.

Start codes (lordkit.training.init, the small preset's `colour` form) are measured at each
--blur (latent.pca_blur) on the whole variant, generated into --work; trained stage-1 codes are
measured with --trained MODEL_DIR:DATA_DIR (a model's content table and the dataset it was trained
on, e.g. a family benchmark run's W/models/V and W/data/V-train). Factors with one level are left
out; rotation is ambiguous for shapes that look the same rotated (ring, circle, plus), so its
figure has a floor above 0.

    python benchmarks/code_alignment.py --work W                          # thin and solid variants
    python benchmarks/code_alignment.py --work W --variants outline-hue --blur 0,0.25 \\
        --trained W2/models/outline-hue:W2/data/outline-hue-train

Run as a script, it appends the run to benchmarks/results/code_alignment.jsonl (benchmarks/_results.py;
LORDKIT_RESULTS_DIR=DIR elsewhere).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lordkit.data.datasets.synthetic import FACTORS, FAMILY, content_factors_of
from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError
from lordkit.training.init import pca_content_codes

DEFAULT_VARIANTS = ("outline-hue", "outline-hue-mid-grey", "outline-class-light", "colour-class",
                    "hue-content-mid-grey", "large")
CONTENT_DIM, CODE_STD = 8, 1.0  # the small preset's


def factor_grid(ds: Dataset) -> dict[str, int]:
    """The variant's content grid (levels per factor) from the store's meta."""
    grid = (ds.meta.extra or {}).get("content_grid")
    if not grid or not ds.has_content_labels:
        raise LordkitError(f"{ds.path} is not a synthetic set with content labels")
    return {f: int(grid[f]) for f in FACTORS}


def nearest_factor_error(codes: np.ndarray, class_ids: np.ndarray, content_ids: np.ndarray,
                         grid: dict[str, int]) -> dict[str, float]:
    """Mean |factor(image) - factor(nearest code in another class)| in grid steps, per factor with
    more than one level, over every image and every other class."""
    factors = np.array([content_factors_of(int(c), grid) for c in content_ids])
    codes = np.asarray(codes, np.float64)
    codes = (codes - codes.mean(0)) / np.maximum(codes.std(0), 1e-12)  # every dimension weighs the same
    errors = []
    classes = np.unique(class_ids)
    for a in classes:
        rows_a = np.flatnonzero(class_ids == a)
        for b in classes[classes != a]:
            rows_b = np.flatnonzero(class_ids == b)
            d = ((codes[rows_a, None, :] - codes[None, rows_b, :]) ** 2).sum(-1)
            errors.append(np.abs(factors[rows_a] - factors[rows_b[d.argmin(1)]]))
    mean = np.concatenate(errors).mean(0)
    return {f: float(mean[i]) for i, f in enumerate(FACTORS) if grid[f] > 1}


def start_codes(name: str, work: Path, blurs: list[float]) -> list[dict[str, Any]]:
    opts, img_size = FAMILY[name]
    path = work / name
    if not (path / "meta.json").exists():
        preprocess("synthetic", None, path, img_size=img_size, opts=Options(dict(opts)), force=True,
                   show_progress=False)
    ds = Dataset(path)
    grid, cls, cid = factor_grid(ds), np.asarray(ds.class_ids), np.asarray(ds.content_ids)
    return [{"variant": name, "codes": "start", "blur": blur,
             "error": nearest_factor_error(pca_content_codes(ds, CONTENT_DIM, CODE_STD, 0, "colour", blur=blur),
                                           cls, cid, grid)}
            for blur in blurs]


def trained_codes(spec: str) -> dict[str, Any]:
    from lordkit.modeldir import load_config, load_latent  # torch, only for a trained model

    model_dir, sep, data = spec.partition(":")
    if not sep:
        raise LordkitError(f"--trained {spec!r}: expected MODEL_DIR:DATA_DIR")
    ds = Dataset(Path(data))
    cfg = load_config(Path(model_dir))
    if cfg.model.n_imgs != len(ds):
        raise LordkitError(f"{model_dir} was trained on {cfg.model.n_imgs:,} images, {data} has {len(ds):,}")
    codes = load_latent(Path(model_dir), cfg).content_embedding.embedding.weight.detach().numpy()
    return {"variant": Path(data).name, "codes": "trained", "model_dir": model_dir,
            "blur": cfg.latent.pca_blur, "error": nearest_factor_error(
                codes, np.asarray(ds.class_ids), np.asarray(ds.content_ids), factor_grid(ds))}


def main(argv: list[str] | None = None, *, record: bool = False) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="Where the variants are generated (kept, reused).")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"Comma-separated family variants; '' for none. Known: {', '.join(FAMILY)}")
    ap.add_argument("--blur", default="0,0.125,0.25", help="Comma-separated latent.pca_blur values.")
    ap.add_argument("--trained", action="append", default=[], metavar="MODEL_DIR:DATA_DIR",
                    help="A trained model's stage-1 codes and its training data (repeatable).")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in FAMILY]
    try:
        blurs = [float(b) for b in args.blur.split(",")]
    except ValueError:
        blurs = [math.nan]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(FAMILY)}")
    if not all(0 <= b <= 0.5 for b in blurs):
        ap.error("--blur takes numbers in [0, 0.5] separated by commas")
    try:
        rows = [row for v in variants for row in start_codes(v, args.work, blurs)]
        rows += [trained_codes(spec) for spec in args.trained]
    except (LordkitError, OSError) as e:  # OSError: a --work or --data path that cannot be used
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print("| variant | codes | blur | nearest other-class code: factor error (grid steps) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['codes']} | {r['blur']:g} | "
              + ", ".join(f"{f} {v:.2f}" for f, v in r["error"].items()) + " |")
    figures = {"rows": rows}
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('code_alignment', figures, args=args, argv=argv)}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:], record=True)
