"""`lordkit evaluate`: how well a trained (amortized) model reconstructs, disentangles and transfers.

1. Reconstruction: L1 and PSNR of generator(encoders(x)) against x.
2. Leakage (the papers' disentanglement measure): a classifier (an MLP) predicts the class from the
   content codes, by stratified 5-fold cross-validation (fitted on four folds, scored on the fifth,
   so every code is held out once) repeated over 5 partitions: mean accuracy, its std over the folds
   and the std of the partitions' means, next to chance (the majority class's share). Where content
   labels exist, the same from class codes to content.
   Near chance = the codes do not leak.
3. Content transfer against ground truth, where every (class, content) pair has a true image
   (synthetic: rendered; shapes3d, cars3d, smallnorb: looked up in the data): L1 and PSNR of
   generator(content(A), class(B)) against the true image of (class of B, content of A), next to
   the naive baseline that returns A unchanged.
4. Cycle score, for any data (no ground truth needed): A's content is put in B's class, the result is
   encoded again, and its class code is compared with B's and its content code with A's (L2
   distance), next to the distances of unrelated images' codes (A's class code to B's, B's content
   code to A's). A ratio of 1 means the cycle lands no nearer than an unrelated image; 0 is exact.
5. Independent class check (class_check): a logistic regression on downsampled pixels, fitted on
   the real images (its cross-validated accuracy on them reported), classifies transferred images;
   how often it sees the target class, next to its accuracy on real images. Content survival:
   simple per-image features (mean intensity, centroid, spread, edge density, per-channel means) of
   the content image against the result, correlated within each target class, next to the same
   correlation with an unrelated real image of that class.
6. Collapse: how much the output changes with the content image at a fixed class image, and with
   the class at a fixed content, over the data's own pixel spread (lordkit.collapse), flagged below
   the config's amortized.collapse_threshold; and any collapse recorded during training (metrics.jsonl).
7. A transfer grid PNG.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from lordkit.collapse import collapse_report
from lordkit.data.store import Dataset
from lordkit.fsutil import atomic_write_json
from lordkit.modeldir import (check_data_matches, eval_grid_path, eval_json_path, load_amortized, load_config,
                              load_data_record)
from lordkit.device import pick_device
from lordkit.errors import BadInput
from lordkit.models import AmortizedModel
from lordkit.viz import sample_positions, save_png, transfer_grid

GROUND_TRUTH_DATASETS = ("synthetic", "shapes3d", "cars3d", "smallnorb")


def _to_tensor(imgs: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.array(imgs)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def encode(model: AmortizedModel, ds: Dataset, idx: np.ndarray, device: torch.device,
           batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Content codes, class codes, mean L1 and mean PSNR of the reconstructions of ds[idx]."""
    contents, classes, l1s, psnrs = [], [], [], []
    for start in range(0, len(idx), batch_size):
        rows = np.sort(idx[start:start + batch_size])
        x = _to_tensor(ds.images[rows], device)
        out, content, cls = model(x)
        contents.append(content.float().cpu().numpy())
        classes.append(cls.float().cpu().numpy())
        l1s.append((out - x).abs().mean(dim=(1, 2, 3)).cpu().numpy())
        psnrs.append(psnr(out, x).cpu().numpy())
    order = np.argsort(np.argsort(idx))  # back from sorted reads to the order of idx
    content_codes = np.concatenate(contents)[order]
    class_codes = np.concatenate(classes)[order]
    return content_codes, class_codes, float(np.concatenate(l1s).mean()), float(np.concatenate(psnrs).mean())


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [0, 1]; (B,)."""
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


N_FOLDS = 5  # leakage: stratified k-fold cross-validation over every evaluated code
# ... repeated over this many partitions: on 359 digit codes one 5-fold partition's figure moves by
# 1.0-2.0 points (std) from one partition seed to the next, so the mean of 5 by about 0.7 (1.5 / sqrt 5).
N_REPEATS = 5
MAX_REPEATS = 100
REPEAT_SEED_STEP = 7919  # partition r's seed: seed + r * this (and its MLPs' seeds follow it)


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The fold (0..k-1) of each item: each label's items shuffled (seeded) and dealt round-robin, the
    dealing continued from label to label, so every fold gets its share of every label (up to one)
    and the folds' sizes differ by at most one."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int64)
    start = 0
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        fold[rows] = (start + np.arange(len(rows))) % k
        start = (start + len(rows)) % k
    return fold


def leakage(codes: np.ndarray, labels: np.ndarray, seed: int = 0, n_folds: int = N_FOLDS,
            n_repeats: int = N_REPEATS, n_steps: int = 300) -> dict[str, Any]:
    """How well `labels` can be predicted from `codes`, by stratified k-fold cross-validation repeated
    over `n_repeats` partitions: for each partition an MLP is fitted on k-1 folds and scored on the
    held-out one, for each fold, so every code is held out once per partition. accuracy: the mean over
    all folds of all partitions (accuracy_std: the folds' std); repeat_std: the std of the partitions'
    means, what the figure of one partition alone would move by; chance: the majority label's share of
    all codes (what always guessing it scores on held-out folds, to within a code per fold). Repeat 0
    is the single k-fold partition of `seed`."""
    _require_repeats(n_repeats)
    uniq, y = np.unique(labels, return_inverse=True)
    n = len(codes)
    chance = float(np.bincount(y).max() / n) if n else 0.0
    k = max(2, min(n_folds, n))
    partitions = [stratified_folds(y, k, seed + REPEAT_SEED_STEP * r) for r in range(n_repeats)]
    first = partitions[0]
    base = {"chance": chance, "n_folds": k, "n_repeats": n_repeats, "n_codes": int(n),
            "n_train": int(np.sum(first != 0)), "n_test": int(np.sum(first == 0)),
            "method": f"stratified {k}-fold cross-validation" + (f" repeated over {n_repeats} partitions" if
                                                                  n_repeats > 1 else "") + ", MLP"}
    if len(uniq) < 2 or n < 4:
        return {"accuracy": 1.0, "accuracy_std": 0.0, "repeat_std": 0.0, "fold_accuracies": [], **base}
    accs = []
    with _single_thread():  # a small MLP: thread start-up and barriers cost more than they save
        for r, folds in enumerate(partitions):
            for f in range(k):
                test, train = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
                accs.append(_fit_and_score(codes, y, len(uniq), train, test, seed + REPEAT_SEED_STEP * r + f,
                                           n_steps))
    repeat_means = np.asarray(accs).reshape(n_repeats, k).mean(1)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "repeat_std": float(np.std(repeat_means)), "repeat_accuracies": [round(a, 4) for a in repeat_means],
            "fold_accuracies": [round(a, 4) for a in accs], **base}


def _require_repeats(n_repeats: int) -> None:
    if not (isinstance(n_repeats, int) and 1 <= n_repeats <= MAX_REPEATS):
        raise BadInput(f"the leakage cross-validation needs 1 to {MAX_REPEATS} repeats, got {n_repeats}")


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_and_score(codes: np.ndarray, y: np.ndarray, n_labels: int, train: np.ndarray, test: np.ndarray,
                   seed: int, n_steps: int) -> float:
    """Held-out accuracy of an MLP fitted on codes[train] (standardised by the training part)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(codes.astype(np.float32))
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    yt = torch.from_numpy(y)
    clf = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, n_labels))
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    train_t = torch.from_numpy(train)
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(n_steps):
            b = train_t[torch.randint(len(train_t), (min(256, len(train_t)),), generator=g)]
            loss = nn.functional.cross_entropy(clf(x[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = clf(x[torch.from_numpy(test)]).argmax(1)
    return float((pred == yt[torch.from_numpy(test)]).float().mean())


class TruthLookup:
    """The true image of a (class, content) pair: rendered (synthetic) or found in a dataset."""

    def __init__(self, ds: Dataset, model_data: dict[str, Any]):
        self.ds = ds
        self.grid = ds.meta.extra.get("content_grid") or model_data.get("content_grid")
        self.render = ds.meta.dataset_id == "synthetic" and self.grid is not None
        self.index: dict[tuple[int, int], int] = {}
        if not self.render:
            for i, (c, k) in enumerate(zip(ds.class_ids.tolist(), ds.content_ids.tolist())):
                self.index.setdefault((c, k), i)

    def __call__(self, class_id: int, content_id: int) -> np.ndarray | None:
        if self.render:
            from lordkit.data.datasets.synthetic import render_truth, truth_options

            # Class names are the shape names (a sorted prefix of SHAPES), so they index the drawing.
            return render_truth(class_id, content_id, self.ds.meta.img_size, self.grid, self.ds.meta.class_names,
                                channels=self.ds.meta.channels, **truth_options(self.ds.meta.extra))
        i = self.index.get((class_id, content_id))
        return None if i is None else np.asarray(self.ds.images[i])


@torch.no_grad()
def transfer_error(model: AmortizedModel, ds: Dataset, truth: TruthLookup, device: torch.device,
                   n_pairs: int = 512, seed: int = 0) -> dict[str, float] | None:
    """L1/PSNR of content transfer to the true image, and of the copy-the-content-image baseline."""
    rng = np.random.default_rng(seed)
    n = len(ds)
    rows: list[tuple[int, int, np.ndarray]] = []
    for _ in range(n_pairs * 4):
        if len(rows) >= n_pairs:
            break
        a, b = rng.integers(n, size=2)
        ca, cb = int(ds.class_ids[a]), int(ds.class_ids[b])
        if ca == cb:
            continue
        t = truth(cb, int(ds.content_ids[a]))
        if t is not None:
            rows.append((int(a), int(b), t))
    if not rows:
        return None
    out_l1, out_psnr, base_l1, base_psnr = [], [], [], []
    for start in range(0, len(rows), 128):
        part = rows[start:start + 128]
        xa = _to_tensor(np.stack([ds.images[a] for a, _, _ in part]), device)
        xb = _to_tensor(np.stack([ds.images[b] for _, b, _ in part]), device)
        xt = _to_tensor(np.stack([t for _, _, t in part]), device)
        out, _, _ = model.convert(xa, xb)
        out_l1.append((out - xt).abs().mean(dim=(1, 2, 3)).cpu())
        out_psnr.append(psnr(out, xt).cpu())
        base_l1.append((xa - xt).abs().mean(dim=(1, 2, 3)).cpu())
        base_psnr.append(psnr(xa, xt).cpu())
    l1, bl1 = float(torch.cat(out_l1).mean()), float(torch.cat(base_l1).mean())
    return {"l1": l1, "psnr": float(torch.cat(out_psnr).mean()), "baseline_l1": bl1,
            "baseline_psnr": float(torch.cat(base_psnr).mean()), "l1_ratio_to_baseline": l1 / max(bl1, 1e-12),
            "n_pairs": len(rows)}


@torch.no_grad()
def cycle_score(model: AmortizedModel, ds: Dataset, device: torch.device, n_pairs: int = 512,
                seed: int = 0) -> dict[str, Any] | None:
    """Transfer A into B's class, encode the result, and compare its codes with the codes it should
    have: class code with B's, content code with A's. Baselines: the distance between the codes of
    unrelated images (A's class code to B's, B's content code to A's). Pairs have different classes."""
    rng = np.random.default_rng(seed + 1)
    n, class_ids = len(ds), np.asarray(ds.class_ids)
    pairs: list[tuple[int, int]] = []
    for _ in range(n_pairs * 4):
        if len(pairs) >= n_pairs:
            break
        a, b = (int(i) for i in rng.integers(n, size=2))
        if class_ids[a] != class_ids[b]:
            pairs.append((a, b))
    if not pairs:
        return None
    d_class, d_content, base_class, base_content = [], [], [], []
    for start in range(0, len(pairs), 128):
        part = pairs[start:start + 128]
        xa = _to_tensor(np.stack([ds.images[a] for a, _ in part]), device)
        xb = _to_tensor(np.stack([ds.images[b] for _, b in part]), device)
        out, content_a, class_b = model.convert(xa, xb)
        _, content_out, class_out = model.convert(out, out)
        content_b = model.content_encoder(xb)
        class_a = model.class_encoder(xa)
        d_class.append((class_out - class_b).norm(dim=1).cpu())
        d_content.append((content_out - content_a).norm(dim=1).cpu())
        base_class.append((class_a - class_b).norm(dim=1).cpu())
        base_content.append((content_b - content_a).norm(dim=1).cpu())
    result: dict[str, Any] = {"n_pairs": len(pairs)}
    for name, d, base in (("class", d_class, base_class), ("content", d_content, base_content)):
        dist, base_dist = float(torch.cat(d).mean()), float(torch.cat(base).mean())
        result[name] = {"distance": dist, "baseline_distance": base_dist,
                        "ratio_to_baseline": dist / base_dist if base_dist > 1e-12 else float("nan")}
    return result


CHECK_SIZE = 8  # the independent class check sees images downsampled to this side


def pixel_features(imgs: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 or [0, 1] float -> (N, CHECK_SIZE**2 * C) area-averaged pixels in [0, 1]."""
    x = torch.from_numpy(np.asarray(imgs, np.float32)).permute(0, 3, 1, 2)
    if np.asarray(imgs).dtype == np.uint8:
        x = x / 255.0
    return nn.functional.adaptive_avg_pool2d(x, CHECK_SIZE).flatten(1).numpy()


def _logistic(x: np.ndarray, y: np.ndarray, n_labels: int, seed: int, n_steps: int = 100):
    """A multinomial logistic regression (standardised inputs, L2 1e-3), fitted with L-BFGS; returns
    predict(x) -> labels."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(x.astype(np.float32))
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-3)
    lin = nn.Linear(x.shape[1], n_labels)
    yt = torch.from_numpy(y)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=n_steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lin((xt - mean) / std), yt) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lin((torch.from_numpy(z.astype(np.float32)) - mean) / std).argmax(1).numpy()

    return predict


def content_features(imgs: np.ndarray) -> np.ndarray:
    """Simple per-image measures of content, (N, 5 + C) for (N, H, W, C) in [0, 1]: mean intensity,
    the intensity-weighted centroid (x, y) of the deviation from the image's median, its spread,
    edge density (share of pixels with a gradient above 0.1), and the per-channel means."""
    x = np.asarray(imgs, np.float32)
    grey = x.mean(-1)  # (N, H, W)
    dev = np.abs(grey - np.median(grey.reshape(len(x), -1), 1)[:, None, None])
    w = dev / np.maximum(dev.sum((1, 2), keepdims=True), 1e-6)
    h, wd = grey.shape[1:]
    ys, xs = np.mgrid[0:h, 0:wd] / np.array([h, wd])[:, None, None]
    cx, cy = (w * xs).sum((1, 2)), (w * ys).sum((1, 2))
    spread = np.sqrt((w * ((xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2)).sum((1, 2)))
    gy, gx = np.gradient(grey, axis=(1, 2))
    edges = (np.hypot(gx, gy) > 0.1).mean((1, 2))
    return np.column_stack([grey.mean((1, 2)), cx, cy, spread, edges, x.mean((1, 2))])


CONTENT_FEATURES = ("mean_intensity", "centroid_x", "centroid_y", "spread", "edge_density")


def _within_class_corr(src: np.ndarray, out: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per feature: the Pearson correlation of src and out within each group, averaged over groups
    (weighted by size; groups of fewer than 3 or with a constant feature are skipped). (F,)"""
    sums, weights = np.zeros(src.shape[1]), np.zeros(src.shape[1])
    for g in np.unique(groups):
        rows = groups == g
        if rows.sum() < 3:
            continue
        a, b = src[rows] - src[rows].mean(0), out[rows] - out[rows].mean(0)
        den = np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))
        ok = den > 1e-9
        sums[ok] += rows.sum() * (a * b).sum(0)[ok] / den[ok]
        weights[ok] += rows.sum()
    return np.where(weights > 0, sums / np.maximum(weights, 1), np.nan)


@torch.no_grad()
def class_check(model: AmortizedModel, ds: Dataset, idx: np.ndarray, device: torch.device, n_pairs: int = 512,
                seed: int = 0, n_folds: int = N_FOLDS, n_repeats: int = N_REPEATS) -> dict[str, Any] | None:
    """An independent check of class transfer, with no part of lordkit's model in the judge: a logistic
    regression on 8x8 downsampled pixels is fitted on the real images ds[idx] (its accuracy on real
    images reported by stratified k-fold cross-validation repeated over `n_repeats` partitions, as
    `leakage` partitions them), then classifies transferred images G(content of A, class of B):
    how often it says B's class (and how often A's). Content survival: simple per-image features
    (content_features) of A against those of the result, correlated within each target class, next to
    the same correlation with a real image of B's class (a result that ignores A scores about 0)."""
    labels = np.asarray(ds.class_ids)[idx]
    uniq, y = np.unique(labels, return_inverse=True)
    if len(uniq) < 2 or len(idx) < 2 * n_folds:
        return None
    _require_repeats(n_repeats)
    feats = pixel_features(ds.images[np.sort(idx)])[np.argsort(np.argsort(idx))]
    accs = []
    with _single_thread():  # small fits: threads cost more than they save
        for r in range(n_repeats):
            folds = stratified_folds(y, n_folds, seed + REPEAT_SEED_STEP * r)
            for f in range(n_folds):
                test, train = folds == f, folds != f
                fit = _logistic(feats[train], y[train], len(uniq), seed)
                accs.append(float((fit(feats[test]) == y[test]).mean()))
        predict = _logistic(feats, y, len(uniq), seed)
    repeat_means = np.asarray(accs).reshape(n_repeats, n_folds).mean(1)

    rng = np.random.default_rng(seed + 3)
    a_rows, b_rows = [], []
    for _ in range(n_pairs * 4):
        if len(a_rows) >= n_pairs:
            break
        a, b = rng.integers(len(idx), size=2)
        if y[a] != y[b]:
            a_rows.append(int(a))
            b_rows.append(int(b))
    a_rows, b_rows = np.array(a_rows), np.array(b_rows)
    outs = []
    for start in range(0, len(a_rows), 128):
        xa = _to_tensor(np.stack([ds.images[idx[i]] for i in a_rows[start:start + 128]]), device)
        xb = _to_tensor(np.stack([ds.images[idx[i]] for i in b_rows[start:start + 128]]), device)
        out, _, _ = model.convert(xa, xb)
        outs.append(out.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
    out_imgs = np.concatenate(outs)  # (P, H, W, C) in [0, 1]
    pred = predict(pixel_features(out_imgs))
    src = np.stack([np.asarray(ds.images[idx[i]]) for i in a_rows]).astype(np.float32) / 255.0
    # A real image of each pair's target class other than B (B itself shares nothing with A but its class).
    other = np.array([rng.choice(np.flatnonzero(y == y[b])) for b in b_rows])
    ref = np.stack([np.asarray(ds.images[idx[i]]) for i in other]).astype(np.float32) / 255.0
    fs, fo, fr = content_features(src), content_features(out_imgs), content_features(ref)
    corr, base = _within_class_corr(fs, fo, y[b_rows]), _within_class_corr(fs, fr, y[b_rows])
    names = list(CONTENT_FEATURES) + [f"channel_{c}_mean" for c in range(src.shape[-1])]
    return {
        "classifier": f"logistic regression on {CHECK_SIZE}x{CHECK_SIZE} pixels, fitted on the real images",
        "real_accuracy": float(np.mean(accs)), "real_accuracy_std": float(np.std(accs)),
        "real_repeat_std": float(np.std(repeat_means)),
        "real_repeat_accuracies": [round(float(a), 4) for a in repeat_means], "n_folds": n_folds, "n_repeats": n_repeats,
        "chance": float(np.bincount(y).max() / len(y)),
        "transferred_as_target_class": float((pred == y[b_rows]).mean()),
        "transferred_as_content_class": float((pred == y[a_rows]).mean()),
        "n_pairs": int(len(a_rows)),
        "content_survival": {
            "mean_corr": float(np.nanmean(corr)), "baseline_mean_corr": float(np.nanmean(base)),
            "per_feature": {n: (None if np.isnan(c) else round(float(c), 4)) for n, c in zip(names, corr)},
            "baseline_per_feature": {n: (None if np.isnan(c) else round(float(c), 4)) for n, c in zip(names, base)},
        },
    }


@torch.no_grad()
def grid_png(model: AmortizedModel, ds: Dataset, out: Path, device: torch.device, k: int = 8, seed: int = 0) -> Path:
    idx = sample_positions(np.asarray(ds.class_ids), ds.n_classes, k, seed)
    imgs = _to_tensor(np.stack([ds.images[i] for i in idx]), device)
    k = len(idx)
    gen, _, _ = model.convert(imgs.repeat(k, 1, 1, 1), imgs.repeat_interleave(k, 0))
    imgs_np = imgs.cpu().numpy()
    return save_png(out, transfer_grid(imgs_np, imgs_np, gen.cpu().numpy().reshape(k, k, *gen.shape[1:]),
                                       channels_first=True, cell=max(64, imgs.shape[-1])))


def evaluate(model_dir: Path, ds: Dataset, *, data_name: str, device: str = "cpu", max_imgs: int = 5000,
             n_pairs: int = 512, seed: int = 0, cv_repeats: int = N_REPEATS) -> dict[str, Any]:
    """Run all the measures; writes eval/<data_name>.json and eval/<data_name>-transfer.png."""
    _require_repeats(cv_repeats)
    dev = pick_device(device)
    cfg = load_config(model_dir)
    check_data_matches(ds, cfg, "evaluate", n_imgs_must_match=False)
    model = load_amortized(model_dir, cfg, dev)
    model_data = load_data_record(model_dir)
    rng = np.random.default_rng(seed)
    idx = np.arange(len(ds)) if len(ds) <= max_imgs else np.sort(rng.choice(len(ds), max_imgs, replace=False))
    content_codes, class_codes, rec_l1, rec_psnr = encode(model, ds, idx, dev)
    result: dict[str, Any] = {
        "model": str(model_dir), "data": data_name, "n_imgs": int(len(idx)),
        "reconstruction": {"l1": rec_l1, "psnr": rec_psnr},
        "leakage": {"class_from_content": leakage(content_codes, ds.class_ids[idx], seed, n_repeats=cv_repeats)},
    }
    if ds.has_content_labels:
        result["leakage"]["content_from_class"] = leakage(class_codes, ds.content_ids[idx], seed, n_repeats=cv_repeats)
    if ds.meta.dataset_id in GROUND_TRUTH_DATASETS and ds.has_content_labels:
        result["transfer"] = transfer_error(model, ds, TruthLookup(ds, model_data), dev, n_pairs, seed)
    result["cycle"] = cycle_score(model, ds, dev, n_pairs, seed)
    result["class_check"] = class_check(model, ds, idx, dev, n_pairs, seed, n_repeats=cv_repeats)
    result["collapse"] = collapse_report(model, ds, dev, cfg.amortized.collapse_threshold, model_dir, seed=seed)
    result["grid_png"] = str(grid_png(model, ds, eval_grid_path(model_dir, data_name), dev))
    json_path = eval_json_path(model_dir, data_name)
    atomic_write_json(json_path, result)
    result["json"] = str(json_path)
    return result
