"""What goes into a checkpoint: model, optimizer, scheduler, RNG state and step, always in the
single-process layout, so a run resumes with any number of processes.

Under torchrun the per-image content table (and its Adam moments) is split by rank; it is gathered
in image order before writing and each rank keeps its own rows when reading. The files themselves
belong to lordkit.modeldir (write_checkpoint / read_checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lordkit import distributed
from lordkit.distributed import Dist
from lordkit.errors import LordkitError
from lordkit.modeldir import read_checkpoint, write_checkpoint

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")  # per-row optimizer state that is split with the table


@dataclass(frozen=True)
class ShardedTable:
    """A per-image parameter whose rows are dealt to ranks (lordkit.distributed.owned_indices)."""

    key: str  # its state-dict key, e.g. "content_embedding.embedding.weight"
    n_imgs: int  # rows of the whole table, all ranks together
    seed: int  # deals the rows to ranks
    dist: Dist

    def gather(self, local: Tensor) -> Tensor:
        """This rank's rows (n_local, ...) -> the whole table (n_imgs, ...) in image order, on the CPU.
        Collective: every rank calls it."""
        return distributed.gather_rows(local, self.n_imgs, self.dist, self.seed).cpu()

    def own(self, full: Tensor) -> Tensor:
        """The whole table (n_imgs, ...) -> this rank's rows (n_local, ...)."""
        if full.shape[0] != self.n_imgs:
            raise LordkitError(f"checkpoint table has {full.shape[0]} rows, the data {self.n_imgs} images")
        return full[torch.from_numpy(distributed.owned_indices(self.n_imgs, self.dist, self.seed))]


def _optimizer_index(model: nn.Module, optimizer: torch.optim.Optimizer, key: str) -> int:
    """Position of parameter `key` in the optimizer's flat parameter list (its state-dict id)."""
    target = dict(model.named_parameters())[key]
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    return next(i for i, p in enumerate(flat) if p is target)


def _map_moments(optim_state: dict[str, Any], i: int, fn) -> dict[str, Any]:
    """optim_state with fn applied to the Adam moments of parameter i (when it has any yet)."""
    if i not in optim_state["state"]:
        return optim_state
    state = dict(optim_state["state"][i])
    for key in ADAM_MOMENTS:
        if key in state:
            state[key] = fn(state[key])
    return {**optim_state, "state": {**optim_state["state"], i: state}}


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer,
                table: ShardedTable | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Model and optimizer state in the single-process layout: the sharded table (and its Adam
    moments) gathered from all ranks in image order. Collective when `table` is given."""
    model_state = {k: v.detach() for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    if table is None:
        return model_state, optim_state
    model_state[table.key] = table.gather(model_state[table.key])
    optim_state = _map_moments(optim_state, _optimizer_index(model, optimizer, table.key), table.gather)
    return model_state, optim_state


def load_full_states(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Tensor],
                     optim_state: dict[str, Any], table: ShardedTable | None) -> None:
    """Load single-process-layout state, keeping this rank's rows of the sharded table."""
    if table is not None:
        model_state = {**model_state, table.key: table.own(model_state[table.key])}
        optim_state = _map_moments(optim_state, _optimizer_index(model, optimizer, table.key), table.own)
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise LordkitError(f"checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(optim_state)


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(model_dir: Path, stage: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    *, step: int, epoch: int, dist: Dist, table: ShardedTable | None,
                    progress: dict[str, Any] | None = None) -> None:
    """Model, optimizer, scheduler, RNG and step, swapped in as one unit by rank 0; `progress` adds
    fields to its progress.json (total_steps, settings, ...). The model state is the one the stage
    writes as its weights after its last step. Collective under torchrun (the sharded table is
    gathered first)."""
    model_state, optim_state = full_states(model, optimizer, table)
    if dist.main:
        state = {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": capture_rng(),
                 "step": step, "epoch": epoch, "world_size": dist.world}
        write_checkpoint(model_dir, stage, model_state, state,
                         {"stage": stage, "step": step, "epoch": epoch, "world_size": dist.world, "time": time.time(),
                          **(progress or {})})
    distributed.barrier(dist)


def load_checkpoint(model_dir: Path, stage: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    *, dist: Dist, table: ShardedTable | None) -> int:
    """Restore model, optimizer, scheduler and (same world size) RNG; returns the step to continue from."""
    model_state, state = read_checkpoint(model_dir, stage)
    load_full_states(model, optimizer, model_state, state["optimizer"], table)
    scheduler.load_state_dict(state["scheduler"])
    if state.get("world_size", 1) == dist.world and dist.main:
        restore_rng(state["rng"])  # exact continuation; other ranks (and other world sizes) reseed
    return int(state["step"])
