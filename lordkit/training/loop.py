"""The step loop both stages share: schedule, logging cadence, checkpoint cadence, stop on signals.

A stage describes itself in a LoopSpec (model, optimizer, its step and sample functions) and hands
it to `Loop(...).run()`. Under torchrun every rank runs the loop over its own images with
batch_size / world images per step; the schedule counts global steps, so it means the same for any
world size.

A run resumed from the checkpoint of the stage's last step trains nothing: it draws the last sample
grid if that is missing, and the stage writes its weights as after training. A run killed after its
last checkpoint is finished that way (lordkit.modeldir.stage_weights writes the weights alone for
the commands that only read them).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from lordkit import distributed
from lordkit.collapse import CollapseWatch
from lordkit.console import make_progress
from lordkit.distributed import Dist
from lordkit.errors import LordkitError
from lordkit.fsutil import fault_point, temp_file
from lordkit.modeldir import checkpoint_dir, has_checkpoint, read_metrics, sample_path, samples_dir, weights_path
from lordkit.training.checkpoint import ShardedTable, load_checkpoint, save_checkpoint
from lordkit.training.data import ImageBank, epoch_order
from lordkit.training.metrics import MetricsLog
from lordkit.training.session import peer_failures
from lordkit.viz import save_png, transfer_grid

if TYPE_CHECKING:
    from lordkit.training.budget import Deadline

CHECKPOINT_EVERY_S = 600.0  # also checkpoint mid-epoch at least this often


class TrainingInterrupted(LordkitError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the CLI exits with 130."""

    exit_code = 130


class NonFiniteLoss(LordkitError):
    exit_code = 3


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
    table: ShardedTable | None = None  # the per-image table split by rank, gathered for checkpoints
    # Probes for a collapse and decides (lordkit.collapse); its probe runs on rank 0 whenever a sample
    # grid is due (every epoch without a sampler). None: no probe.
    collapse: CollapseWatch | None = None
    # What the weights follow from (lordkit.modeldir.stage_settings), recorded in every checkpoint.
    settings: str = ""
    # Steps of the whole run, where a time budget's plan set them (its last epoch may be partial);
    # None: n_epochs whole epochs.
    total_steps: int | None = None
    # A budgeted stage's deadline (lordkit.training.budget.Deadline): at each epoch's end and loss read,
    # the run's length is refitted to end by it at the measured pace.
    deadline: Deadline | None = None


def epoch_steps(n_global: int, batch_size: int) -> int:
    """Steps per epoch: the last partial batch is dropped, as the reference does."""
    return max(1, n_global // min(batch_size, n_global))


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps and saves before exiting."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
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


class LossMeter:
    """Losses summed on the device between reads, so that reading them is the loop's only host sync."""

    def __init__(self, device: torch.device, d: Dist):
        self.device, self.dist = device, d
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.terms_sum: dict[str, Tensor] = {}
        self.n_steps = 0

    def add(self, loss: Tensor, terms: dict[str, Tensor]) -> None:
        self.loss_sum += loss.detach().float()
        for name, value in terms.items():
            zero = torch.zeros((), device=self.device)
            self.terms_sum[name] = self.terms_sum.get(name, zero) + value.detach().float()
        self.n_steps += 1

    def read(self) -> dict[str, float]:
        """The mean over ranks and steps since the last read: one host sync and one all-reduce."""
        stacked = torch.stack([self.loss_sum, *self.terms_sum.values()]).div(max(self.n_steps, 1))
        values = distributed.all_mean(stacked, self.dist).tolist()
        out = dict(zip(["loss", *self.terms_sum.keys()], values))
        self.reset()
        return out


class Loop:
    """One run of a stage's step loop: its schedule, where it stands, and what is due when."""

    def __init__(self, spec: LoopSpec, model_dir: Path, bank: ImageBank, class_ids: Tensor, *, resume: bool,
                 tensorboard: bool = True):
        self.spec, self.model_dir, self.bank, self.class_ids = spec, model_dir, bank, class_ids
        d = self.dist = spec.dist
        n_global = spec.n_global or bank.n
        self.batch_size = min(spec.batch_size, n_global)
        if self.batch_size % d.world:
            raise LordkitError(f"{spec.stage}.batch_size {self.batch_size} must be divisible by the number of "
                               f"processes ({d.world})")
        self.local_batch = self.batch_size // d.world
        self.steps_per_epoch = epoch_steps(n_global, self.batch_size)
        self.total_steps = spec.total_steps or self.steps_per_epoch * spec.n_epochs
        if not (self.steps_per_epoch * (spec.n_epochs - 1) < self.total_steps <= self.steps_per_epoch * spec.n_epochs):
            raise LordkitError(f"{spec.stage}: {self.total_steps} steps are not {spec.n_epochs} epochs of "
                               f"{self.steps_per_epoch} steps; train it again with --force")
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(spec.optimizer, T_max=max(self.total_steps, 1),
                                                                    eta_min=spec.lr_min)
        self.step = self._load_checkpoint() if resume else 0
        # The decay ends at the configured end, also where a run shortened by its deadline was killed
        # before its first checkpoint under the new length (config.json already has it).
        self.scheduler.T_max = max(self.total_steps, 1)
        if resume and self.step >= self.total_steps and self._ended():
            raise LordkitError(f"the {spec.stage} stage of {model_dir} is complete ({self.step}/{self.total_steps} steps); "
                               "nothing to resume")
        self.log = MetricsLog(model_dir, spec.stage, tensorboard and d.main) if d.main else None
        if d.main:
            samples_dir(model_dir).mkdir(exist_ok=True)
        self.losses = LossMeter(bank.device, d)
        self.last_checkpoint_s = time.monotonic()
        self.log_time_s, self.log_step = time.perf_counter(), self.step
        self.last_good: dict[str, float] = {"loss": math.nan}
        if self.step >= self.total_steps:  # finishing: the losses of the last step, as it logged them
            logged = [r for r in read_metrics(model_dir) if r.get("stage") == spec.stage and r.get("step") == self.step]
            if logged and isinstance(logged[-1].get("loss"), (int, float)):
                self.last_good = {"loss": float(logged[-1]["loss"])}
        self.img_per_sec = 0.0
        self.collapse = spec.collapse
        self.progress: Any = None
        self.pace_marks: list[tuple[float, int]] = []  # (time.monotonic(), step) at the deadline's checks

    def run(self, *, show_progress: bool = True, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train for spec.n_epochs over the bank; checkpoint each epoch, periodically and on interrupt."""
        spec, d = self.spec, self.dist
        finishing = self.step >= self.total_steps  # resumed from the last checkpoint: only the end is left
        flag = StopFlag()
        progress_cm = make_progress() if (show_progress and d.main) else contextlib.nullcontext()
        try:
            with flag.installed(), progress_cm as progress, peer_failures(d, self.model_dir, spec.stage):
                task = None
                self.progress = progress
                if progress is not None:
                    task = progress.add_task(spec.stage, total=self.total_steps, completed=self.step, unit="step")
                spec.model.train()
                self.pace_marks = [(time.monotonic(), self.step)]
                while self.step < self.total_steps:
                    epoch, k = divmod(self.step, self.steps_per_epoch)
                    order = epoch_order(self.bank.n, self.steps_per_epoch * self.local_batch,
                                        spec.seed + 7919 * d.rank, epoch, self.bank.device)
                    while k < self._epoch_length(epoch):  # a deadline may change the length on the way
                        # Sample a batch of this rank's images (on the device).
                        idx = order[k * self.local_batch:(k + 1) * self.local_batch]
                        imgs = self.bank.batch(idx)

                        # Update.
                        self._update(idx, imgs)
                        if on_step is not None:
                            on_step(self.step)

                        # Log every log_every steps and at the end of an epoch: the only host sync.
                        # At the end of an epoch with a sample grid due, also probe for a collapse.
                        epoch_end = k == self._epoch_length(epoch) - 1
                        k += 1
                        at_log = self.step % spec.log_every == 0 or epoch_end
                        if at_log:
                            losses = self._read_losses()
                            extra = self._probe() if epoch_end else {}
                            self._log(losses, extra)
                            if task is not None:
                                progress.update(task, description=self._progress_line(epoch, losses))
                        if task is not None:
                            progress.update(task, completed=self.step)

                        # On SIGINT/SIGTERM save and stop; also save at least every CHECKPOINT_EVERY_S.
                        if self._all_agree(flag.signum is not None, at_log):
                            self._save_checkpoint()
                            raise self._interrupted(flag.signum)
                        if self._all_agree(time.monotonic() - self.last_checkpoint_s > CHECKPOINT_EVERY_S, at_log):
                            self._save_checkpoint()
                        # A budgeted run's length follows its pace (every rank at the same step).
                        if spec.deadline is not None and at_log and not epoch_end:
                            self._keep_deadline(task)

                    # Save a snapshot and a sample grid at the end of each epoch.
                    self._save_checkpoint()
                    if self.step == self.total_steps:
                        fault_point("stage-last-checkpoint")  # the weights are in the checkpoint, not yet in place
                    self._save_samples()

                    # Stop on a collapse if asked to (every rank at the same epoch; the checkpoint is saved).
                    watch = self.collapse
                    if watch is not None and watch.stop and self._all_agree(watch.event is not None, True):
                        if progress is not None:  # the error line alone on stderr, no half-drawn bar above it
                            progress.live.transient = True
                        raise watch.stopped(self.step, checkpoint_dir(self.model_dir, spec.stage))

                    if spec.deadline is not None and self.step < self.total_steps:
                        self._keep_deadline(task)

                # The end of a run killed after its last checkpoint: the last sample grid, if it is missing.
                if finishing:
                    self._save_samples(missing_only=True)
        finally:
            if self.log is not None:
                self.log.close()
        return {"stage": spec.stage, "steps": self.step, "epochs": spec.n_epochs, "img_per_sec": self.img_per_sec,
                "world_size": d.world, **self.last_good}

    def _epoch_length(self, epoch: int) -> int:
        """Steps of epoch `epoch` (from 0): whole, or what is left of the run in its last."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def _epoch_number(self, step: int) -> int:
        """The epoch (from 1) that `step` ends or falls in; what sample grids are named by."""
        return -(-step // self.steps_per_epoch)

    def _pace(self) -> float | None:
        """Seconds a step has taken lately, checkpoints and grids included: over the last epoch and at
        least the deadline's window, counted back from now (None until that much has been seen)."""
        now, deadline = time.monotonic(), self.spec.deadline
        window_s = deadline.WINDOW_FRACTION * deadline.budget_s
        since = [(t, s) for t, s in self.pace_marks if s <= self.step - self.steps_per_epoch and t <= now - window_s]
        t0, s0 = since[-1] if since else self.pace_marks[0]
        if self.step <= s0 or now - t0 < window_s:
            return None
        return (now - t0) / (self.step - s0)

    def _keep_deadline(self, task: Any) -> None:
        """Refit the run's length when, at its recent pace, it would end after the deadline or well
        before it (lordkit.training.budget.Deadline.fit): the new length is recorded first (config.json,
        through the deadline), the cosine decay is refitted to end at the new last step, and a
        checkpoint under the new settings follows, so a kill from here on finishes the refitted stage."""
        spec, deadline = self.spec, self.spec.deadline
        pace = self._pace()
        self.pace_marks.append((time.monotonic(), self.step))
        figures = torch.tensor([pace or 0.0, deadline.at - time.monotonic(), float(pace is not None)],
                               dtype=torch.float64, device=self.bank.device)
        step_s, left_s, measured = distributed.all_mean(figures, self.dist).tolist()
        if measured < 1.0:  # some rank has not seen enough of the pace yet
            return
        total = deadline.fit(self.step, self.total_steps, int(deadline.MOST_OF_PLAN * deadline.planned_steps), step_s,
                             left_s, deadline.SLACK_FRACTION * deadline.budget_s)
        if total == self.total_steps:
            return
        spec.settings = deadline.refit(total, self.step)
        if self.dist.main and deadline.say(self.total_steps, total):
            self._warn(deadline.line(spec.stage, self.total_steps, total, step_s))
        self.total_steps = total
        spec.n_epochs = self._epoch_number(total)
        self.scheduler.T_max = max(self.total_steps, 1)  # the decay reaches lr_min at the new end
        if task is not None:
            self.progress.update(task, total=self.total_steps)
        self._save_checkpoint()

    def _update(self, idx: Tensor, imgs: Tensor) -> None:
        spec = self.spec
        loss, terms = spec.step(idx, imgs, self.class_ids.index_select(0, idx), self.step / self.steps_per_epoch)
        spec.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        spec.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.losses.add(loss, terms)

    def _read_losses(self) -> dict[str, float]:
        """The mean losses since the last read; a NaN or infinity stops the run, the last checkpoint kept."""
        losses = self.losses.read()
        if not all(math.isfinite(v) for v in losses.values()):
            stage = self.spec.stage
            ckpt = checkpoint_dir(self.model_dir, stage)
            if has_checkpoint(self.model_dir, stage):
                kept = (f"the last good checkpoint is kept in {ckpt}; lower the learning rate and train "
                        "again (--resume continues from it)")
            else:
                kept = "no checkpoint was written yet; lower the learning rate and train again"
            raise NonFiniteLoss(f"{stage} loss became {losses['loss']} near step {self.step}; {kept}")
        return losses

    def _sample_due(self) -> bool:
        done_epoch = self._epoch_number(self.step)
        return done_epoch % self.spec.sample_every_epochs == 0 or self.step == self.total_steps

    def _probe(self) -> dict[str, Any]:
        """Rank 0 at the end of an epoch: the variation ratios when a sample grid is due (every epoch
        without a sampler), and a one-time warning when they show a collapse."""
        spec, watch = self.spec, self.collapse
        if watch is None or watch.probe is None or not self.dist.main or (
                spec.sample is not None and not self._sample_due()):
            return {}
        ratios = watch.probe()
        spec.model.train()
        event = watch.check(ratios, self.step / self.steps_per_epoch)
        if event is None:
            partial = watch.check_partial(ratios, self.step / self.steps_per_epoch)
            if partial is not None:
                self._warn(f"warning: {partial}")
                return {**ratios, "event": "partial_collapse"}
            return ratios
        if not watch.stop:  # stopping says it in its error line instead
            self._warn(f"warning: {watch.message()}")
        return {**ratios, "event": "collapse"}

    def _warn(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            from lordkit.console import console

            console.print(line, markup=False, highlight=False)

    def _log(self, losses: dict[str, float], extra: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        self.img_per_sec = (self.step - self.log_step) * self.batch_size / max(now - self.log_time_s, 1e-9)
        self.log_time_s, self.log_step = now, self.step
        self.last_good = losses
        if self.log is not None:
            self.log.write({"step": self.step, "epoch": self.step / self.steps_per_epoch, **losses,
                            "lr": self.scheduler.get_last_lr()[0], "img_per_sec": self.img_per_sec,
                            "world_size": self.dist.world, "time": time.time(), **(extra or {})})

    def _progress_line(self, epoch: int, losses: dict[str, float]) -> str:
        flag = " [collapsed]" if self.collapse is not None and self.collapse.event is not None else ""
        return (f"{self.spec.stage} ep {epoch + 1}/{self.spec.n_epochs} "
                f"loss {losses['loss']:.4f} {self.img_per_sec:,.0f} img/s{flag}")

    def _all_agree(self, local: bool, at_log: bool) -> bool:
        """Whether to act on a condition of this process. One process acts at once; ranks agree at
        log steps (one all-reduce), so all act at the same step."""
        if not self.dist.enabled:
            return local
        return at_log and distributed.any_rank(local, self.dist, self.bank.device)

    def _interrupted(self, signum: int | None) -> TrainingInterrupted:
        name = signal.Signals(signum).name if signum else "stop"  # "stop": another rank got the signal
        return TrainingInterrupted(f"{name} received: saved a checkpoint at step {self.step}/{self.total_steps} "
                                   f"in {checkpoint_dir(self.model_dir, self.spec.stage)}; continue with --resume")

    def _ended(self) -> bool:
        """Whether what the end of the stage writes is all there: its weights and its last sample grid."""
        grid = sample_path(self.model_dir, self.spec.stage, self._epoch_number(self.total_steps))
        return weights_path(self.model_dir, self.spec.stage).is_file() and (self.spec.sample is None or grid.is_file())

    def _save_checkpoint(self) -> None:
        if self.losses.n_steps:  # never save weights that a NaN has already reached
            self._read_losses()
        spec, watch = self.spec, self.collapse
        # What decides whether the checkpoint can finish the stage (lordkit.modeldir.stage_weights).
        progress = {"total_steps": self.total_steps, "settings": spec.settings,
                    "collapse_stop": bool(watch is not None and watch.stop and watch.event is not None)}
        save_checkpoint(self.model_dir, spec.stage, spec.model, spec.optimizer, self.scheduler, step=self.step,
                        epoch=self.step // self.steps_per_epoch, dist=self.dist, table=spec.table, progress=progress)
        self.last_checkpoint_s = time.monotonic()

    def _load_checkpoint(self) -> int:
        spec = self.spec
        return load_checkpoint(self.model_dir, spec.stage, spec.model, spec.optimizer, self.scheduler,
                               dist=self.dist, table=spec.table)

    def _save_samples(self, missing_only: bool = False) -> None:
        spec = self.spec
        path = sample_path(self.model_dir, spec.stage, self._epoch_number(self.step))
        if not self.dist.main or spec.sample is None or not self._sample_due() or (missing_only and path.is_file()):
            return
        grid = spec.sample()
        if self.step < self.total_steps:
            save_png(path, grid)
        else:  # the last grid: written complete under a temporary name, then renamed (a fault point between)
            tmp = temp_file(path)
            try:
                save_png(tmp, grid)
                fault_point("stage-last-grid")
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        if self.log is not None:
            self.log.image("samples", grid, self.step)
        spec.model.train()


def sample_grid(imgs: Tensor, generated: Tensor) -> np.ndarray:
    """Every sample image's content in every sample image's class: imgs (K, C, H, W), generated (K*K, C, H, W)."""
    k = imgs.shape[0]
    imgs_np = imgs.float().cpu().numpy()
    return transfer_grid(imgs_np, imgs_np, generated.float().cpu().numpy().reshape(k, k, *generated.shape[1:]),
                         channels_first=True, cell=max(64, imgs.shape[-1]))
