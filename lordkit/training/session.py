"""This process's place in a training run: rank, device, process group, the model-dir lock, and the
rule that rank 0 decides and every rank stops with its error. Also what both stages build on the
device (placement, Adam, DDP wrapping, autocast)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from lordkit import distributed
from lordkit.console import console
from lordkit.device import pick_device
from lordkit.distributed import Dist
from lordkit.errors import LordkitError
from lordkit.modeldir import checkpoint_dir, training_lock


@contextlib.contextmanager
def session(model_dir: Path, device: str) -> Iterator[tuple[Dist, torch.device]]:
    """This process's place in the run: rank, device, process group, and (rank 0) the model lock."""
    d = distributed.from_env()
    if d.enabled:
        dev, created = distributed.setup(d, device)
    else:
        dev, created = pick_device(device), False
    with contextlib.ExitStack() as stack:
        # Rank 0 takes the lock; a refusal there stops every rank with the same message.
        on_main(d, lambda: stack.enter_context(training_lock(model_dir)))
        yield d, dev
    if created:  # only after success: with a dead peer the teardown itself can block
        torch.distributed.destroy_process_group()


def on_main(d: Dist, fn: Callable[[], Any]) -> Any:
    """Run fn on rank 0; a user error there stops every rank with the same message."""
    error, result = None, None
    if d.main:
        try:
            result = fn()
        except LordkitError as e:
            error = str(e)
    error = distributed.broadcast_error(error, d)
    if error is not None:
        raise LordkitError(error)
    return result


@contextlib.contextmanager
def peer_failures(d: Dist, model_dir: Path, stage: str) -> Iterator[None]:
    """Under torchrun, a collective that fails because another rank died becomes one clear line."""
    try:
        yield
    except LordkitError:
        raise
    except RuntimeError as e:  # gloo/NCCL report a lost peer as RuntimeError (DistBackendError)
        if not d.enabled:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first)[:160]  # drop C++ source locations
        err = LordkitError(f"rank {d.rank}: another process of the run failed or stopped answering ({first}); "
                           f"the last complete checkpoint in {checkpoint_dir(model_dir, stage)} is kept")
        # Say it now: the launcher is about to SIGTERM this process, before the CLI could print it.
        console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        err.reported = True
        raise err from None


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on the device; channels-last and cuDNN autotuning on CUDA."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def adam(groups: list[dict[str, Any]], betas: tuple[float, float], device: torch.device) -> torch.optim.Optimizer:
    # Fused Adam: one kernel for all parameters on CUDA; the plain for-each implementation on CPU.
    return torch.optim.Adam(groups, betas=betas, fused=device.type == "cuda")


def wrap_ddp(module: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module in DistributedDataParallel under torchrun (gradients all-reduced), else itself."""
    if not d.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def autocast(device: torch.device, amp: bool, cpu_bf16: bool = False):
    """bf16 autocast on CUDA when amp is on; on the CPU only when asked for (cpu_bf16), since it
    changes the arithmetic of a run that was fp32 before. AdaIN's statistics stay float32 either way."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16 and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_cpu_bf16(cpu_bf16: bool, device: torch.device) -> None:
    """Refuse CPU bf16 where it cannot pay: a device that is not the CPU, or a CPU without native bf16."""
    if not cpu_bf16:
        return
    from lordkit.device import native_bf16

    if device.type != "cpu":
        raise LordkitError(f"--cpu-bf16 is for training on the CPU; this run is on {device} (--amp covers CUDA)")
    if not native_bf16():
        raise LordkitError("--cpu-bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); this one has neither, "
                           "and emulated bf16 is slower than fp32")
