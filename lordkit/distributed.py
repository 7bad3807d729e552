"""Training on several processes (torchrun): the process group, and the content table sharded by rank.

Under `torchrun --nproc_per_node N -m lordkit train ...` every process sees WORLD_SIZE, RANK and
LOCAL_RANK. Generator, modulation and class table are wrapped in DistributedDataParallel and their
gradients are all-reduced. The per-image content table is not: a seeded permutation assigns every
image to exactly one rank, each rank samples only its own images and holds only their rows (and
those rows' Adam moments), so no content-table gradient ever crosses the network. Rank 0 gathers
the rows in image order when it writes a checkpoint, which therefore has the single-process format
and can be resumed with any number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor

from lordkit.errors import LordkitError

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a dead peer fails the run instead of hanging it forever


@dataclass(frozen=True)
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(world=world, rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def setup(d: Dist, device: str) -> tuple[torch.device, bool]:
    """Pick this process's device and join the process group (NCCL on GPUs, gloo on CPU).

    Returns (device, whether this call created the group and so must destroy it)."""
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device not in ("auto", "cuda", "cpu"):
        raise LordkitError(f"under torchrun, --device must be auto, cuda or cpu (each rank takes cuda:LOCAL_RANK), got {device}")
    if device == "cuda" and not torch.cuda.is_available():
        raise LordkitError("--device cuda was asked for but CUDA is not available; use --device cpu")
    dev = torch.device(f"cuda:{d.local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if tdist.is_initialized():
        return dev, False
    tdist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return dev, True


def owned_indices(n: int, d: Dist, seed: int, rank: int | None = None) -> np.ndarray:
    """The images `rank` owns (sorted): a seeded permutation dealt round-robin, so every rank can
    compute every other rank's share without communication. One process owns everything."""
    if d.world == 1:
        return np.arange(n, dtype=np.int64)
    perm = np.random.default_rng(seed + 0x5EED).permutation(n)
    owner = np.empty(n, dtype=np.int64)
    owner[perm] = np.arange(n) % d.world
    return np.flatnonzero(owner == (d.rank if rank is None else rank)).astype(np.int64)


def gather_rows(local: Tensor, n: int, d: Dist, seed: int) -> Tensor:
    """Assemble a per-image tensor (n_local, ...) of every rank into (n, ...) in image order.

    Collective: every rank calls it; every rank gets the result (all_gather works on NCCL and gloo)."""
    if d.world == 1:
        return local
    shares = [owned_indices(n, d, seed, r) for r in range(d.world)]
    n_max = max(len(s) for s in shares)
    padded = torch.zeros((n_max, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(d.world)]
    tdist.all_gather(parts, padded)
    full = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for share, part in zip(shares, parts):
        full[torch.from_numpy(share).to(local.device)] = part[: len(share)]
    return full


def all_mean(values: Tensor, d: Dist) -> Tensor:
    """Mean of a tensor over ranks (the loss read at a log step)."""
    if d.world == 1:
        return values
    out = values.clone()
    tdist.all_reduce(out)
    return out / d.world


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if it is true on any: all ranks stop at the same step."""
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    if d.world > 1:
        tdist.barrier()


def broadcast_error(message: str | None, d: Dist) -> str | None:
    """Rank 0's error (or None) on every rank, so all ranks stop with the same message."""
    if d.world == 1:
        return message
    box = [message]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
