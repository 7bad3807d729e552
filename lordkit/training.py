"""The two LORD training stages and the loop machinery they share.

Stage 1 (`train_latent`): per-image content codes, per-class codes, modulation and generator are
optimized jointly on reconstruction; content codes get Gaussian noise and an L2 decay.
Stage 2 (`train_amortized`): content and class encoders learn to output the stage-1 codes while the
generator (initialised from stage 1) is fine-tuned on reconstruction.

What they read and write is a model dir (lordkit.modeldir owns its format).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from lordkit import distributed
from lordkit.config import LordConfig
from lordkit.console import console, make_progress
from lordkit.data.store import Dataset
from lordkit.device import pick_device
from lordkit.distributed import Dist
from lordkit.errors import LordkitError
from lordkit.modeldir import (check_data_matches, checkpoint_dir, data_record, is_model_dir, load_config, load_latent,
                              read_checkpoint, save_config, save_data_record, save_state, save_weights, training_lock,
                              weights_path, write_checkpoint)
from lordkit.losses import content_penalty, make_loss
from lordkit.models import EMBEDDING_INIT, LatentModel, RegularizedEmbedding, amortized_from_latent
from lordkit.viz import sample_positions, save_png, transfer_grid

STAGES = ("latent", "amortized")
CHECKPOINT_EVERY_S = 600.0  # also checkpoint mid-epoch at least this often


class TrainingInterrupted(LordkitError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the CLI exits with 130."""

    exit_code = 130


class NonFiniteLoss(LordkitError):
    exit_code = 3


# ----------------------------------------------------------------------------------------------
# Devices and data on them.


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


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# The loop shared by both stages.


@dataclass
class LoopSpec:
    """What differs between the stages; the loop does the rest."""

    stage: str  # "latent" or "amortized"
    model: nn.Module  # everything trained (its own shard of the content table under torchrun)
    optimizer: torch.optim.Optimizer
    n_epochs: int
    batch_size: int  # global: split evenly across ranks
    seed: int
    log_every: int
    lr_min: float
    # (local idx (B,), imgs (B,C,H,W), class_ids (B,), epoch_float) -> (total loss, {name: term}) tensors
    step: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, dict[str, Tensor]]]
    # () -> sample grid image (H, W, 3) uint8; run on rank 0 only
    sample: Callable[[], np.ndarray] | None = None
    sample_every_epochs: int = 1
    n_global: int = 0  # images in the whole dataset (all ranks)
    dist: Dist = Dist()
    sharded_param: str | None = None  # state-dict key of the per-image table sharded by rank


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps and saves before exiting."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator["_StopFlag"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.signum is not None:  # a second Ctrl-C while saving: give up immediately
                signal.default_int_handler(signum, frame)
            self.signum = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _sharded_param_index(spec: LoopSpec) -> int | None:
    """Position of the sharded table in the optimizer's flat parameter list (its state-dict id)."""
    if spec.sharded_param is None:
        return None
    target = dict(spec.model.named_parameters())[spec.sharded_param]
    flat = [p for g in spec.optimizer.param_groups for p in g["params"]]
    return next(i for i, p in enumerate(flat) if p is target)


def full_states(spec: LoopSpec) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Model and optimizer state in the single-process layout: the sharded table (and its Adam
    moments) gathered from all ranks in image order. Collective under torchrun."""
    model_state = {k: v.detach() for k, v in spec.model.state_dict().items()}
    optim_state = spec.optimizer.state_dict()
    if not spec.dist.enabled or spec.sharded_param is None:
        return model_state, optim_state
    gather = lambda t: distributed.gather_rows(t, spec.n_global, spec.dist, spec.seed).cpu()  # noqa: E731
    model_state[spec.sharded_param] = gather(model_state[spec.sharded_param])
    i = _sharded_param_index(spec)
    state = dict(optim_state["state"].get(i, {}))
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key] = gather(state[key])
    optim_state = {**optim_state, "state": {**optim_state["state"], i: state}}
    return model_state, optim_state


def _shard_states(spec: LoopSpec, model_state: dict[str, Tensor], optim_state: dict[str, Any]) -> None:
    """Load single-process-layout state, keeping this rank's rows of the sharded table."""
    if spec.sharded_param is not None:
        rows = torch.from_numpy(distributed.owned_indices(spec.n_global, spec.dist, spec.seed))
        full = model_state[spec.sharded_param]
        if full.shape[0] != spec.n_global:
            raise LordkitError(f"checkpoint table has {full.shape[0]} rows, the data {spec.n_global} images")
        model_state = {**model_state, spec.sharded_param: full[rows]}
        i = _sharded_param_index(spec)
        if i in optim_state["state"]:
            state = dict(optim_state["state"][i])
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key][rows]
            optim_state = {**optim_state, "state": {**optim_state["state"], i: state}}
    missing, unexpected = spec.model.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise LordkitError(f"checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    spec.optimizer.load_state_dict(optim_state)


def save_checkpoint(model_dir: Path, spec: LoopSpec, scheduler, step: int, epoch: int) -> None:
    """Model, optimizer, scheduler, RNG and step, swapped in as one unit by rank 0.
    Collective under torchrun (the sharded table is gathered first)."""
    model_state, optim_state = full_states(spec)
    if spec.dist.main:
        state = {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": capture_rng(),
                 "step": step, "epoch": epoch, "world_size": spec.dist.world}
        write_checkpoint(model_dir, spec.stage, model_state, state,
                         {"stage": spec.stage, "step": step, "epoch": epoch, "world_size": spec.dist.world,
                          "time": time.time()})
    distributed.barrier(spec.dist)


def load_checkpoint(model_dir: Path, spec: LoopSpec, scheduler) -> int:
    """Restore model, optimizer, scheduler and (same world size) RNG; returns the step to continue from."""
    model_state, state = read_checkpoint(model_dir, spec.stage)
    _shard_states(spec, model_state, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("world_size", 1) == spec.dist.world and spec.dist.main:
        restore_rng(state["rng"])  # exact continuation; other ranks (and other world sizes) reseed
    return int(state["step"])


class MetricsLog:
    """Append-only metrics.jsonl (+ TensorBoard scalars and images when tensorboard is installed)."""

    def __init__(self, model_dir: Path, stage: str, tensorboard: bool = True):
        self.path = model_dir / "metrics.jsonl"
        self.stage = stage
        self.tb = None
        if tensorboard:
            with contextlib.suppress(ImportError, ModuleNotFoundError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(model_dir / "tensorboard" / stage))

    def write(self, record: dict[str, Any]) -> None:
        record = {"stage": self.stage, **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{self.stage}/{k}", v, record["step"])

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(f"{self.stage}/{tag}", img, step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@contextlib.contextmanager
def _peer_failures(d: Dist, model_dir: Path, stage: str) -> Iterator[None]:
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


def run_loop(spec: LoopSpec, model_dir: Path, bank: ImageBank, class_ids: Tensor, *, resume: bool,
             show_progress: bool = True, on_step: Callable[[int], None] | None = None,
             tensorboard: bool = True) -> dict[str, Any]:
    """Train `spec.model` for spec.n_epochs over the bank; checkpoint each epoch and on interrupt.

    Under torchrun every rank runs this with its own bank (its images) and batch_size / world
    images per step; the schedule counts global steps, so it means the same for any world size."""
    d = spec.dist
    device = bank.device
    n_global = spec.n_global or bank.n
    batch_size = min(spec.batch_size, n_global)
    if batch_size % d.world:
        raise LordkitError(f"{spec.stage}.batch_size {batch_size} must be divisible by the number of processes ({d.world})")
    local_batch = batch_size // d.world
    steps_per_epoch = max(1, n_global // batch_size)  # drop the last partial batch, as the reference
    total_steps = steps_per_epoch * spec.n_epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(spec.optimizer, T_max=max(total_steps, 1),
                                                           eta_min=spec.lr_min)
    step = load_checkpoint(model_dir, spec, scheduler) if resume else 0
    log = MetricsLog(model_dir, spec.stage, tensorboard and d.main) if d.main else None
    samples_dir = model_dir / "samples"
    if d.main:
        samples_dir.mkdir(exist_ok=True)
    flag = _StopFlag()
    loss_sum = torch.zeros((), device=device)
    terms_sum: dict[str, Tensor] = {}
    n_accumulated = 0
    last_ckpt = time.monotonic()
    t_log, step_log = time.perf_counter(), step
    last_good = {"loss": math.nan}
    img_per_sec = 0.0

    def read_losses() -> dict[str, float]:
        """One host sync (and one all-reduce): the mean of the losses accumulated since the last read."""
        nonlocal loss_sum, terms_sum, n_accumulated
        stacked = torch.stack([loss_sum, *terms_sum.values()]).div(max(n_accumulated, 1))
        values = distributed.all_mean(stacked, d).tolist()
        out = dict(zip(["loss", *terms_sum.keys()], values))
        loss_sum = torch.zeros((), device=device)
        terms_sum = {}
        n_accumulated = 0
        return out

    def check_finite(losses: dict[str, float], at_step: int) -> None:
        if not all(math.isfinite(v) for v in losses.values()):
            ckpt = checkpoint_dir(model_dir, spec.stage)
            kept = f"the last good checkpoint is kept in {ckpt}" if (ckpt / "state.pt").exists() else "no checkpoint was written yet"
            raise NonFiniteLoss(f"{spec.stage} loss became {losses['loss']} near step {at_step}; {kept}; "
                                "lower the learning rate and train again (--resume continues from it)")

    def checkpoint(at_step: int) -> None:
        nonlocal last_ckpt
        if n_accumulated:
            check_finite(read_losses(), at_step)
        save_checkpoint(model_dir, spec, scheduler, at_step, at_step // steps_per_epoch)
        last_ckpt = time.monotonic()

    def stop_requested(at_log_step: bool) -> bool:
        # One process checks its flag every step; ranks agree at log steps, so all stop together.
        if not d.enabled:
            return flag.signum is not None
        return at_log_step and distributed.any_rank(flag.signum is not None, d, device)

    def time_for_checkpoint(at_log_step: bool) -> bool:
        due = time.monotonic() - last_ckpt > CHECKPOINT_EVERY_S
        if not d.enabled:
            return due
        return at_log_step and distributed.any_rank(due, d, device)

    progress_cm = make_progress() if (show_progress and d.main) else contextlib.nullcontext()
    try:
        with flag.installed(), progress_cm as progress, _peer_failures(d, model_dir, spec.stage):
            task = None
            if progress is not None:
                task = progress.add_task(spec.stage, total=total_steps, completed=step, unit="step")
            spec.model.train()
            while step < total_steps:
                epoch, in_epoch = divmod(step, steps_per_epoch)
                order = epoch_order(bank.n, steps_per_epoch * local_batch, spec.seed + 7919 * d.rank, epoch, device)
                for k in range(in_epoch, steps_per_epoch):
                    # Sample a batch of this rank's images (on the device).
                    idx = order[k * local_batch:(k + 1) * local_batch]
                    imgs = bank.batch(idx)
                    # Update.
                    loss, terms = spec.step(idx, imgs, class_ids.index_select(0, idx), step / steps_per_epoch)
                    spec.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    spec.optimizer.step()
                    scheduler.step()
                    step += 1
                    loss_sum += loss.detach().float()
                    for name, value in terms.items():
                        terms_sum[name] = terms_sum.get(name, torch.zeros((), device=device)) + value.detach().float()
                    n_accumulated += 1
                    if on_step is not None:
                        on_step(step)
                    # Log every log_every steps: the only host sync of the loop.
                    at_log = step % spec.log_every == 0 or k == steps_per_epoch - 1
                    if at_log:
                        losses = read_losses()
                        check_finite(losses, step)
                        now = time.perf_counter()
                        img_per_sec = (step - step_log) * batch_size / max(now - t_log, 1e-9)
                        t_log, step_log = now, step
                        last_good = losses
                        if log is not None:
                            log.write({"step": step, "epoch": step / steps_per_epoch, **losses,
                                       "lr": scheduler.get_last_lr()[0], "img_per_sec": img_per_sec,
                                       "world_size": d.world, "time": time.time()})
                        if task is not None:
                            progress.update(task, description=f"{spec.stage} ep {epoch + 1}/{spec.n_epochs} "
                                            f"loss {losses['loss']:.4f} {img_per_sec:,.0f} img/s")
                    if task is not None:
                        progress.update(task, completed=step)
                    if stop_requested(at_log):
                        checkpoint(step)
                        name = signal.Signals(flag.signum).name if flag.signum else "stop"
                        raise TrainingInterrupted(f"{name} received: saved a checkpoint at step {step}/{total_steps} "
                                                  f"in {checkpoint_dir(model_dir, spec.stage)}; continue with --resume")
                    if time_for_checkpoint(at_log):
                        checkpoint(step)
                # Save a snapshot and a sample grid at the end of each epoch.
                checkpoint(step)
                done_epoch = step // steps_per_epoch
                if d.main and spec.sample is not None and (done_epoch % spec.sample_every_epochs == 0 or step == total_steps):
                    grid = spec.sample()
                    save_png(samples_dir / f"{spec.stage}-epoch-{done_epoch:04d}.png", grid)
                    if log is not None:
                        log.image("samples", grid, step)
                    spec.model.train()
    finally:
        if log is not None:
            log.close()
    return {"stage": spec.stage, "steps": step, "epochs": spec.n_epochs, "img_per_sec": img_per_sec,
            "world_size": d.world, **{k: v for k, v in last_good.items()}}


def _sample_grid(imgs: Tensor, generated: Tensor) -> np.ndarray:
    """Every sample image's content in every sample image's class: imgs (K, C, H, W), generated (K*K, C, H, W)."""
    k = imgs.shape[0]
    imgs_np = imgs.float().cpu().numpy()
    return transfer_grid(imgs_np, imgs_np, generated.float().cpu().numpy().reshape(k, k, *generated.shape[1:]),
                         channels_first=True, cell=max(64, imgs.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Stage 1.


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def _adam(groups: list[dict[str, Any]], betas: tuple[float, float], device: torch.device) -> torch.optim.Optimizer:
    # Fused Adam: one kernel for all parameters on CUDA; the plain for-each implementation on CPU.
    return torch.optim.Adam(groups, betas=betas, fused=device.type == "cuda")


def _ddp(module: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    if not d.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def prepare_model_dir(model_dir: Path, *, resume: bool, force: bool, stage: str) -> None:
    """Refuse to touch an existing model unless --resume or --force; with --force start it anew."""
    existing = [c for c in model_dir.iterdir() if c.name != ".lock"] if model_dir.exists() else []
    if stage == "latent" and existing and not resume:
        if not force:
            raise LordkitError(f"model {model_dir} already exists; pass --resume to continue it "
                               "or --force to train it anew")
        for child in existing:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


@contextlib.contextmanager
def _session(model_dir: Path, device: str) -> Iterator[tuple[Dist, torch.device]]:
    """This process's place in the run: rank, device, process group, and (rank 0) the model lock."""
    d = distributed.from_env()
    if d.enabled:
        dev, created = distributed.setup(d, device)
    else:
        dev, created = pick_device(device), False
    with contextlib.ExitStack() as stack:
        # Rank 0 takes the lock; a refusal there stops every rank with the same message.
        _on_main(d, lambda: stack.enter_context(training_lock(model_dir)))
        yield d, dev
    if created:  # only after success: with a dead peer the teardown itself can block
        torch.distributed.destroy_process_group()


def _on_main(d: Dist, fn: Callable[[], Any]) -> Any:
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


class _SharedLatent(nn.Module):
    """The stage-1 parts every rank shares (wrapped in DDP): class table, modulation, generator."""

    def __init__(self, model: LatentModel):
        super().__init__()
        self.class_embedding = model.class_embedding
        self.modulation = model.modulation
        self.generator = model.generator

    def forward(self, content_code: Tensor, class_id: Tensor) -> Tensor:
        return self.generator(content_code, self.modulation(self.class_embedding(class_id)))


def train_latent(
    ds: Dataset,
    model_dir: Path,
    cfg: LordConfig,
    *,
    data_name: str = "",
    device: str = "auto",  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True,  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False,  # torch.compile the generator path
    resume: bool = False,  # continue from checkpoints/latent
    force: bool = False,  # replace an existing model dir
    vgg_weights: str | None = None,  # torchvision VGG16 file for loss "vgg" (else the hub cache)
    show_progress: bool = True,
    tensorboard: bool = True,
    on_step: Callable[[int], None] | None = None,  # called after every step (tests, callbacks)
) -> dict[str, Any]:
    """Stage 1: latent optimization. Writes config.json, data.json, latent.safetensors.

    Under torchrun each rank trains the content codes of its own images (see lordkit.distributed)."""
    model_dir = Path(model_dir)
    with _session(model_dir, device) as (d, dev):

        def setup_dir() -> LordConfig:
            prepare_model_dir(model_dir, resume=resume, force=force, stage="latent")
            if resume:
                saved = load_config(model_dir)
                if weights_path(model_dir, "latent").exists() and not checkpoint_dir(model_dir, "latent").exists():
                    raise LordkitError(f"stage 1 of {model_dir} is complete; nothing to resume")
                check_data_matches(ds, saved, "stage 1", n_imgs_must_match=True)
                return saved
            new = cfg.replace(model=dict(n_imgs=len(ds), n_classes=ds.n_classes, img_size=ds.meta.img_size,
                                         channels=ds.meta.channels))
            save_config(model_dir, new)
            save_data_record(model_dir, data_record(ds, data_name or ds.path.name))
            return new

        _on_main(d, setup_dir)
        cfg = load_config(model_dir)  # every rank reads what rank 0 decided
        lc = cfg.latent
        loss_fn = make_loss(lc.loss, vgg_weights).to(dev)
        owned = distributed.owned_indices(len(ds), d, lc.seed)
        torch.manual_seed(lc.seed)
        model = LatentModel(cfg.model)  # same seeded init on every rank and for any world size
        if lc.content_init != EMBEDDING_INIT:
            nn.init.uniform_(model.content_embedding.embedding.weight, -lc.content_init, lc.content_init)
        if d.enabled:  # keep only this rank's rows of the content table
            full_table = model.content_embedding.embedding.weight.detach()
            model.content_embedding = RegularizedEmbedding(len(owned), cfg.model.content_dim)
            model.content_embedding.embedding.weight.data.copy_(full_table[torch.from_numpy(owned)])
            torch.manual_seed(lc.seed + d.rank)  # independent content noise per rank
        model = _prepare(model, dev)
        optimizer = _adam([
            {"params": list(model.generator.parameters()) + list(model.modulation.parameters()), "lr": lc.lr_generator},
            {"params": list(model.content_embedding.parameters()) + list(model.class_embedding.parameters()),
             "lr": lc.lr_latent},
        ], lc.betas, dev)
        bank = ImageBank(ds, dev, rows=owned)
        class_ids = torch.from_numpy(np.asarray(ds.class_ids)[owned]).to(dev)
        content_std = cfg.model.content_std
        shared = _ddp(_SharedLatent(model), d, dev)
        generate = torch.compile(shared) if compile else shared

        def step(idx: Tensor, imgs: Tensor, cls: Tensor, epoch: float) -> tuple[Tensor, dict[str, Tensor]]:
            # Content noise, optionally ramped up from 0 over the first noise_warmup_epochs.
            ramp = min(1.0, epoch / lc.noise_warmup_epochs) if lc.noise_warmup_epochs > 0 else 1.0
            with _autocast(dev, amp):
                content_code = model.content_embedding(idx, content_std * ramp)
                out = generate(content_code, cls)
                rec = loss_fn(out, imgs)
            decay = content_penalty(content_code)
            return rec + lc.content_decay * decay, {"rec": rec, "decay": decay}

        fixed = torch.from_numpy(sample_positions(np.asarray(ds.class_ids)[owned], ds.n_classes)).to(dev)

        @torch.no_grad()
        def sample() -> np.ndarray:
            model.eval()
            content_code = model.content_embedding(fixed)
            params = model.modulation(model.class_embedding(class_ids[fixed]))
            k = len(fixed)
            out = model.generator(content_code.repeat(k, 1), params.repeat_interleave(k, 0))
            imgs = bank.batch(fixed)
            return _sample_grid(imgs, out)

        spec = LoopSpec(stage="latent", model=model, optimizer=optimizer, n_epochs=lc.n_epochs,
                        batch_size=lc.batch_size, seed=lc.seed, log_every=lc.log_every, lr_min=lc.lr_min,
                        step=step, sample=sample, sample_every_epochs=lc.sample_every_epochs,
                        n_global=len(ds), dist=d,
                        sharded_param="content_embedding.embedding.weight" if d.enabled else None)
        result = run_loop(spec, model_dir, bank, class_ids, resume=resume, show_progress=show_progress,
                          on_step=on_step, tensorboard=tensorboard)
        final_state, _ = full_states(spec)
        if d.main:
            save_state(final_state, weights_path(model_dir, "latent"))
        if d.enabled and os.environ.get("LORDKIT_SHARD_DUMP"):
            # Each rank's own rows as it trained them: lets a test check the gathered table row by row.
            dump = Path(os.environ["LORDKIT_SHARD_DUMP"])
            dump.mkdir(parents=True, exist_ok=True)
            save_state({"rows": torch.from_numpy(owned), "table": model.content_embedding.embedding.weight},
                       dump / f"rank{d.rank}.safetensors")
        distributed.barrier(d)
        return result


# ----------------------------------------------------------------------------------------------
# Stage 2.


def train_amortized(
    ds: Dataset,
    model_dir: Path,
    *,
    overrides: list[str] | None = None,  # "amortized.batch_size=64", ... (saved into config.json)
    device: str = "auto",
    amp: bool = True,
    compile: bool = False,
    resume: bool = False,  # continue from checkpoints/amortized
    force: bool = False,  # retrain encoders that are already trained
    vgg_weights: str | None = None,
    show_progress: bool = True,
    tensorboard: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stage 2: train encoders to the stage-1 codes; writes amortized.safetensors."""
    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        load_config(model_dir)  # one clear "model not found" before any lock file is created
    with _session(model_dir, device) as (d, dev):

        def setup_dir() -> None:
            cfg = load_config(model_dir)
            if overrides:
                bad = [o for o in overrides if not o.strip().startswith("amortized.")]
                if bad:
                    raise LordkitError(f"train-encoders only takes amortized.* settings, got {bad[0]!r}")
                cfg = cfg.apply_overrides(overrides)
            check_data_matches(ds, cfg, "stage 2", n_imgs_must_match=True)
            if not weights_path(model_dir, "latent").is_file():
                raise LordkitError(f"{model_dir} has no trained stage 1 (latent.safetensors); run `lordkit train` first")
            done = weights_path(model_dir, "amortized").exists()
            if done and not (resume or force):
                raise LordkitError(f"encoders of {model_dir} are already trained; pass --force to train them anew")
            if not resume:
                ckpt = checkpoint_dir(model_dir, "amortized")
                if ckpt.exists() and not force:
                    raise LordkitError(f"{ckpt} holds an unfinished stage 2; pass --resume to continue it "
                                       "or --force to start it anew")
                save_config(model_dir, cfg)

        _on_main(d, setup_dir)
        cfg = load_config(model_dir)
        latent = load_latent(model_dir, cfg)  # eval mode, CPU
        for p in latent.parameters():
            p.requires_grad_(False)
        ac = cfg.amortized
        loss_fn = make_loss(ac.loss, vgg_weights).to(dev)
        torch.manual_seed(ac.seed)
        model = _prepare(amortized_from_latent(latent, cfg.model), dev)
        latent = latent.to(dev).eval()
        optimizer = _adam([{"params": list(model.parameters()), "lr": ac.lr}], ac.betas, dev)
        owned = distributed.owned_indices(len(ds), d, ac.seed)
        owned_t = torch.from_numpy(owned).to(dev)
        bank = ImageBank(ds, dev, rows=owned)
        class_ids = torch.from_numpy(np.asarray(ds.class_ids)[owned]).to(dev)
        wrapped = _ddp(model, d, dev)
        forward = torch.compile(wrapped) if compile else wrapped

        def step(idx: Tensor, imgs: Tensor, cls: Tensor, epoch: float) -> tuple[Tensor, dict[str, Tensor]]:
            with torch.no_grad():
                content_target = latent.content_embedding(owned_t[idx])  # clean stage-1 codes (eval: no noise)
                class_target = latent.class_embedding(cls)
            with _autocast(dev, amp):
                out, content_code, class_code = forward(imgs)
                rec = loss_fn(out, imgs)
            content_mse = (content_code.float() - content_target).pow(2).mean()
            class_mse = (class_code.float() - class_target).pow(2).mean()
            loss = rec + ac.content_weight * content_mse + ac.class_weight * class_mse
            return loss, {"rec": rec, "content_mse": content_mse, "class_mse": class_mse}

        fixed = torch.from_numpy(sample_positions(np.asarray(ds.class_ids)[owned], ds.n_classes)).to(dev)

        @torch.no_grad()
        def sample() -> np.ndarray:
            model.eval()
            imgs = bank.batch(fixed)
            k = len(fixed)
            out, _, _ = model.convert(imgs.repeat(k, 1, 1, 1), imgs.repeat_interleave(k, 0))
            return _sample_grid(imgs, out)

        spec = LoopSpec(stage="amortized", model=model, optimizer=optimizer, n_epochs=ac.n_epochs,
                        batch_size=ac.batch_size, seed=ac.seed, log_every=ac.log_every, lr_min=ac.lr_min,
                        step=step, sample=sample, n_global=len(ds), dist=d)
        result = run_loop(spec, model_dir, bank, class_ids, resume=resume, show_progress=show_progress,
                          on_step=on_step, tensorboard=tensorboard)
        if d.main:
            save_weights(model, weights_path(model_dir, "amortized"))
        distributed.barrier(d)
        return result
