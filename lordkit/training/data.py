"""Training images on the device and the order an epoch visits them in."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lordkit.data.store import Dataset


class ImageBank:
    """Training images (those of `rows`) on the device as uint8 when they fit, else read per batch
    from the memory map. `batch(local_idx)` returns float (B, C, H, W) in [0, 1], channels-last in
    memory; on the resident path the gather, the layout change and the conversion all run on the
    device, with no host work per step."""

    def __init__(self, ds: Dataset, device: torch.device, rows: np.ndarray | None = None, max_fraction: float = 0.5):
        self.device = device
        self.rows = np.arange(len(ds), dtype=np.int64) if rows is None else rows
        self.n = len(self.rows)
        n_bytes = self.n * int(np.prod(ds.images.shape[1:]))
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            self.resident = n_bytes < max_fraction * free
        else:
            self.resident = n_bytes < 8 * 2**30
        self._mm = ds.images
        self.imgs: Tensor | None = None
        if self.resident:
            host = np.empty((self.n, *ds.images.shape[1:]), np.uint8)
            for start in range(0, self.n, 8192):  # bounded host memory for the copy out of the map
                host[start:start + 8192] = ds.images[self.rows[start:start + 8192]]
            self.imgs = torch.from_numpy(host).to(device)  # (N, H, W, C) uint8

    def batch(self, idx: Tensor) -> Tensor:
        if self.imgs is not None:
            x = self.imgs.index_select(0, idx)
        else:
            rows = self.rows[idx.cpu().numpy()]
            order = np.argsort(rows)  # sorted reads from the memory map, then back to batch order
            host = torch.from_numpy(np.ascontiguousarray(self._mm[rows[order]]))
            host = host[torch.from_numpy(np.argsort(order))]
            if self.device.type == "cuda":
                host = host.pin_memory()
            x = host.to(self.device, non_blocking=True)
        return x.permute(0, 3, 1, 2).float().div_(255.0)  # NHWC storage = channels-last NCHW


def epoch_order(n: int, n_needed: int, seed: int, epoch: int, device: torch.device) -> Tensor:
    """The first n_needed positions of an epoch: a permutation of range(n) (repeated with fresh
    permutations if n_needed > n). It depends only on (seed, epoch): a resumed run replays it."""
    g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    parts = [torch.randperm(n, generator=g) for _ in range(max(1, -(-n_needed // n)))]
    return torch.cat(parts)[:n_needed].to(device)
