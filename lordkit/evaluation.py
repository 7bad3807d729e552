"""`lordkit evaluate`: how well a trained (amortized) model reconstructs, disentangles and transfers.

1. Reconstruction: L1 and PSNR of generator(encoders(x)) against x.
2. Leakage (the papers' disentanglement measure): a classifier is trained on the content codes of
   part of the images to predict their class and scored on the held-out rest, next to chance
   (the majority class of the held-out part). Where content labels exist, the same from class codes
   to content. Near chance = the codes do not leak.
3. Content transfer against ground truth, where every (class, content) pair has a true image
   (synthetic: rendered; shapes3d, cars3d, smallnorb: looked up in the data): L1 and PSNR of
   generator(content(A), class(B)) against the true image of (class of B, content of A), next to
   the naive baseline that returns A unchanged.
4. Cycle score, for any data (no ground truth needed): A's content is put in B's class, the result is
   encoded again, and its class code is compared with B's and its content code with A's (L2
   distance), next to the distances of unrelated images' codes (A's class code to B's, B's content
   code to A's). A ratio of 1 means the cycle lands no nearer than an unrelated image; 0 is exact.
5. Collapse: how much the output changes with the content image at a fixed class image, and with
   the class at a fixed content, over the data's own pixel spread (lordkit.collapse), flagged below
   the config's amortized.collapse_threshold; and any collapse recorded during training (metrics.jsonl).
6. A transfer grid PNG.
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


def leakage(codes: np.ndarray, labels: np.ndarray, seed: int = 0, test_fraction: float = 0.3,
            n_steps: int = 300) -> dict[str, float]:
    """Accuracy of an MLP predicting `labels` from `codes`, fit on one part and scored on the held-out
    part, with the chance level (majority label of the held-out part) beside it."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    test, train = perm[:n_test], perm[n_test:]
    uniq, y = np.unique(labels, return_inverse=True)
    chance = float(np.bincount(y[test]).max() / len(test))
    if len(uniq) < 2 or len(train) < 2:
        return {"accuracy": 1.0, "chance": chance, "n_train": int(len(train)), "n_test": int(len(test))}
    with _single_thread():  # a small MLP: thread start-up and barriers cost more than they save
        return _fit_and_score(codes, y, len(uniq), train, test, chance, seed, n_steps)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_and_score(codes: np.ndarray, y: np.ndarray, n_labels: int, train: np.ndarray, test: np.ndarray,
                   chance: float, seed: int, n_steps: int) -> dict[str, float]:
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
    acc = float((pred == yt[torch.from_numpy(test)]).float().mean())
    return {"accuracy": acc, "chance": chance, "n_train": int(len(train)), "n_test": int(len(test))}


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
             n_pairs: int = 512, seed: int = 0) -> dict[str, Any]:
    """Run all the measures; writes eval/<data_name>.json and eval/<data_name>-transfer.png."""
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
        "leakage": {"class_from_content": leakage(content_codes, ds.class_ids[idx], seed)},
    }
    if ds.has_content_labels:
        result["leakage"]["content_from_class"] = leakage(class_codes, ds.content_ids[idx], seed)
    if ds.meta.dataset_id in GROUND_TRUTH_DATASETS and ds.has_content_labels:
        result["transfer"] = transfer_error(model, ds, TruthLookup(ds, model_data), dev, n_pairs, seed)
    result["cycle"] = cycle_score(model, ds, dev, n_pairs, seed)
    result["collapse"] = collapse_report(model, ds, dev, cfg.amortized.collapse_threshold, model_dir, seed=seed)
    result["grid_png"] = str(grid_png(model, ds, eval_grid_path(model_dir, data_name), dev))
    json_path = eval_json_path(model_dir, data_name)
    atomic_write_json(json_path, result)
    result["json"] = str(json_path)
    return result
