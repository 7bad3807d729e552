"""Fitting a training stage to a time budget (`--time-budget 15m`).

Before training proper, a few steps are timed on the stage's own model, optimizer and data (after a
short warm-up; the model, the optimizer and the random state are put back afterwards, so the run
trains exactly as an unbudgeted run of the same length would), and so are what each epoch adds (a
checkpoint) and each sample grid (the grid and the collapse probe). From those the plan fits:

- total_steps: the most steps that end the stage within the budget, counted from the budget's start
  (the command's start), after what was already spent and a safety margin: the whole epochs that fit
  and, where time is left, part of one more (at least one whole epoch, or the budget is refused);
- n_epochs: the epochs those steps touch (the last one may be partial);
- everything tied to the length keeps its proportion of the run: the content-noise warm-up
  (latent.noise_warmup_epochs) and the sample-grid cadence (latent.sample_every_epochs) are scaled by
  the new length / the configured n_epochs; the cosine learning-rate decay runs over the new total
  steps and the collapse warm-up is a fraction of the epochs, so both follow by themselves;
  checkpoints stay once an epoch (and at the last step).

While the stage trains, its Deadline refits the length to the measured pace (shorter when behind,
longer when ahead, up to twice the plan's steps).

The plan is a plain dict, stored in the stage's `plan` field of config.json: a resumed run reads its
config and so keeps its plan (nothing is timed or fitted again).
"""

from __future__ import annotations

import copy
import io
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from lordkit.config import epoch_schedule
from lordkit.errors import LordkitError
from lordkit.modeldir import save_config, stage_settings
from lordkit.training.session import on_main

WARMUP_STEPS = 3  # untimed steps first: allocations, first-call dispatch, torch.compile
MIN_TIMED_STEPS = 5  # at least this many timed steps ...
MIN_TIMED_S = 2.0  # ... and at least this long, unless it would take more than MAX_TIMING_FRACTION
MAX_TIMING_FRACTION = 0.05  # of the budget spent on timed steps (they are not training)
MARGIN_FRACTION = 0.03  # of the budget kept free for what the timings cannot see (disk, other processes)
ESTIMATE_ABOVE_STEPS = 1000  # without a budget, on a CPU: time a few steps to warn about a long run
LONG_RUN_S = 3600.0  # ... when the estimate is longer than this

SCHEDULE_FIELDS = ("n_epochs", "noise_warmup_epochs", "sample_every_epochs")  # latent fields a plan sets

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(d|h|min|m|sec|s)?", re.IGNORECASE)


class BudgetError(LordkitError, ValueError):
    """A time budget that cannot be read or cannot be met; one line."""


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """Seconds of a duration: "90s", "15m", "2h", "1h30m", "1.5h" or a plain number of seconds."""
    s = str(text).strip().lower().replace(" ", "")
    pos, total, parts = 0, 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            break
        unit = m.group(2)
        if unit is None and (parts or m.end() != len(s)):
            break  # a unit-less number only on its own: "1h30" is refused rather than read as 1h30s
        total += float(m.group(1)) * _UNITS[unit or "s"]
        pos, parts = m.end(), parts + 1
    if not parts or pos != len(s):
        raise BudgetError(f"{flag} must be a duration like 90s, 15m, 2h or 1h30m, got {text!r}")
    if not math.isfinite(total) or total <= 0:
        raise BudgetError(f"{flag} must be longer than 0 seconds, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """1h05m, 2m10s, 45s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Timing:
    """What the planner measured: seconds per step, per checkpoint, per sample grid (grid + probe)."""

    step_s: float
    timed_steps: int
    checkpoint_s: float = 0.0
    sample_s: float = 0.0


def time_steps(model: nn.Module, optimizer: torch.optim.Optimizer, draw: Callable[[], tuple[Tensor, Tensor, Tensor]],
               step: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, dict[str, Tensor]]], *,
               min_steps: int = MIN_TIMED_STEPS, min_s: float = MIN_TIMED_S, max_s: float = math.inf,
               warmup: int = WARMUP_STEPS, sync: Callable[[], None] = lambda: None) -> tuple[float, int]:
    """(seconds per training step, steps timed): `warmup` untimed steps, then at least min_steps and
    min_s (max_s cuts the time short after min_steps). draw() gives (idx, imgs, class_ids) of a batch.
    The model's and optimizer's states and the random state are restored afterwards."""
    from lordkit.training.checkpoint import capture_rng, restore_rng

    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optim_state = copy.deepcopy(optimizer.state_dict())
    rng = capture_rng()
    was_training = model.training
    model.train()

    def one() -> None:
        idx, imgs, cls = draw()
        loss, _ = step(idx, imgs, cls, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        for _ in range(warmup):
            one()
        sync()
        t0 = time.perf_counter()
        n = 0
        while True:
            one()
            n += 1
            if n >= min_steps:
                sync()
                elapsed = time.perf_counter() - t0
                if elapsed >= min(min_s, max_s):
                    return elapsed / n, n
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        optimizer.zero_grad(set_to_none=True)
        restore_rng(rng)
        model.train(was_training)


def time_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Seconds to serialise the model and optimizer once (in memory), doubled for the disk write."""
    t0 = time.perf_counter()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buf)
    return 2.0 * (time.perf_counter() - t0)


def time_call(fn: Callable[[], Any] | None) -> float:
    if fn is None:
        return 0.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def steps_seconds(total_steps: int, steps_per_epoch: int, sample_every: int, t: Timing) -> float:
    """Seconds of a stage of total_steps: the steps, a checkpoint at each epoch's end (and at the last
    step), a sample grid at every sample_every-th epoch and at the last step, and the weights written at
    the end (about one checkpoint)."""
    every = max(sample_every, 1)
    n_epochs = -(-total_steps // steps_per_epoch)
    n_grids = n_epochs // every + (1 if n_epochs % every else 0)
    return total_steps * t.step_s + n_epochs * t.checkpoint_s + n_grids * t.sample_s + t.checkpoint_s


def fit_plan(stage: str, cfg_section: Any, *, budget_s: float, spent_s: float, steps_per_epoch: int,
             timing: Timing, has_sampler: bool = True, now: float | None = None) -> dict[str, Any]:
    """The plan of a stage fitted to budget_s, of which spent_s is already gone: the most steps that fit
    (whole epochs, then part of one more), the schedule scaled with them, and what is expected. Raises
    BudgetError when not even one epoch fits."""
    now = time.time() if now is None else now
    margin_s = MARGIN_FRACTION * budget_s
    left_s = budget_s - spent_s - margin_s
    n0 = max(int(cfg_section.n_epochs), 1)

    def cost(steps: int) -> float:
        n = -(-steps // steps_per_epoch)
        every = epoch_schedule(stage, cfg_section, n).get("sample_every_epochs", 1) if has_sampler else 1
        return steps_seconds(steps, steps_per_epoch, every, timing)

    if cost(steps_per_epoch) > left_s:
        one = steps_per_epoch * timing.step_s + timing.checkpoint_s
        raise BudgetError(
            f"a time budget of {format_duration(budget_s)} does not fit one epoch of the {stage} stage "
            f"({steps_per_epoch} steps of {timing.step_s:.3g} s: about {format_duration(one)} an epoch, and "
            f"{format_duration(spent_s)} already spent before training); give a longer budget")
    # The most steps that fit: cost(lo) <= left_s < cost(hi + 1) throughout (a step costs at least step_s).
    lo, hi = steps_per_epoch, steps_per_epoch + int(left_s / max(timing.step_s, 1e-12))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= left_s else (lo, mid - 1)
    total = lo
    n_epochs = -(-total // steps_per_epoch)
    sched = epoch_schedule(stage, cfg_section, n_epochs)
    if "noise_warmup_epochs" in sched:  # the warm-up keeps its share of the steps, a partial epoch included
        sched["noise_warmup_epochs"] = cfg_section.noise_warmup_epochs * total / (steps_per_epoch * n0)
    expected_s = spent_s + cost(total)
    return {
        "time_budget_s": float(budget_s),
        "planned_at": _utc(now),
        "spent_before_training_s": round(spent_s, 3),
        "step_s": timing.step_s,
        "timed_steps": timing.timed_steps,
        "warmup_steps": WARMUP_STEPS,
        "checkpoint_s": round(timing.checkpoint_s, 4),
        "sample_s": round(timing.sample_s, 4),
        "steps_per_epoch": steps_per_epoch,
        "configured_n_epochs": int(cfg_section.n_epochs),
        **sched,
        "total_steps": total,
        "planned_steps": total,
        "expected_s": round(expected_s, 1),
        "expected_end": _utc(now - spent_s + expected_s),
    }


@dataclass
class Deadline:
    """A budgeted stage's deadline, kept while it trains (lordkit.training.loop): at each epoch's end and
    at the loss reads between, the loop asks `fit` how many steps the run should have at the measured
    pace, and when that differs from its length by more than SLACK_FRACTION of the budget, `refit`
    records the new length in config.json (total_steps and n_epochs, and an entry in the plan's
    `refits`) and returns the settings its checkpoints are written under from then on. A run behind is
    shortened (the machine slower than when the plan was timed); one ahead is lengthened (a slowdown
    that passed, or steps timed while the machine was busier), never past MOST_OF_PLAN times the steps
    its plan fitted. A resumed run has no deadline (it keeps its plan)."""

    at: float  # time.monotonic() by which the stage's steps are to be done
    stage: str
    model_dir: Path
    cfg: Any  # the LordConfig the stage trains with; the refitted one after refit()
    dist: Any
    steps_per_epoch: int
    budget_s: float
    planned_steps: int  # the steps its plan fitted
    refits: list[dict[str, Any]] = field(default_factory=list)
    said_steps: int = 0  # the length the console last heard of (0: the plan's)

    SLACK_FRACTION = 0.01  # of the budget: how far behind or ahead a run may be before it is refitted
    REPORT_FRACTION = 0.05  # of the planned steps: a refit is said on the console when it moved this far
    MOST_OF_PLAN = 2.0  # a run is never lengthened past this many times its plan's steps
    WINDOW_FRACTION = 0.05  # of the budget: the pace is measured over at least this long (and an epoch)

    @staticmethod
    def fit(done: int, total: int, most: int, step_s: float, left_s: float, slack_s: float) -> int:
        """The steps a run that has done `done` of `total` should have when a step takes step_s (its
        share of checkpoints and grids included) and left_s remain: `total` while it ends within
        slack_s of the deadline; behind that, as many as fit (at least one more); ahead of it by more
        than two slacks, as many as fit less a slack, up to `most`. A shortened run also ends a slack
        before the deadline, so that the next small drift does not shorten it again."""
        step_s = max(step_s, 1e-12)
        fits = done + max(0, int(left_s // step_s))
        slack = int(slack_s // step_s)
        if total > fits + slack:
            return max(fits - slack, done + 1)
        if total < most and fits - slack > total + slack:
            return min(most, fits - slack)
        return total

    def say(self, old: int, new: int) -> bool:
        """Whether a refit from old to new steps is worth a console line: the first, and any that moved
        the length REPORT_FRACTION of the plan from the one last said."""
        if self.said_steps and abs(new - self.said_steps) < self.REPORT_FRACTION * self.planned_steps:
            return False
        self.said_steps = new
        return True

    def refit(self, total_steps: int, step: int) -> str:
        section = getattr(self.cfg, self.stage)
        plan = section.plan
        n_epochs = -(-total_steps // self.steps_per_epoch)
        self.refits.append({"at_step": step, "at": _utc(time.time()), "from_steps": int(plan["total_steps"]),
                            "to_steps": total_steps})
        plan = {**plan, "n_epochs": n_epochs, "total_steps": total_steps, "refits": list(self.refits)}
        self.cfg = self.cfg.replace(**{self.stage: {"n_epochs": n_epochs, "plan": plan}})
        on_main(self.dist, lambda: save_config(self.model_dir, self.cfg))
        return stage_settings(self.cfg, self.stage)

    @staticmethod
    def line(stage: str, old: int, new: int, step_s: float) -> str:
        if new < old:
            return (f"{stage} stage behind its time budget (a step now takes {step_s * 1000:.1f} ms): "
                    f"shortened from {old:,} to {new:,} steps to end within it")
        return (f"{stage} stage ahead of its time budget (a step now takes {step_s * 1000:.1f} ms): "
                f"lengthened from {old:,} to {new:,} steps to use it")


def deadline(stage: str, plan: dict[str, Any] | None, *, started: float, model_dir: Path, cfg: Any,
             dist: Any) -> Deadline | None:
    """The Deadline of a stage whose plan was fitted by this run (None without one): the budget's end
    counted from `started`, less the plan's margin and the final weights' write (about a checkpoint)."""
    if not plan:
        return None
    at = started + plan["time_budget_s"] * (1 - MARGIN_FRACTION) - plan["checkpoint_s"]
    return Deadline(at=at, stage=stage, model_dir=Path(model_dir), cfg=cfg, dist=dist,
                    steps_per_epoch=int(plan["steps_per_epoch"]), budget_s=float(plan["time_budget_s"]),
                    planned_steps=int(plan.get("planned_steps", plan["total_steps"])))


def _epochs_text(plan: dict[str, Any]) -> str:
    whole, part = divmod(int(plan["total_steps"]), int(plan["steps_per_epoch"]))
    if not part:
        return f"{whole} epochs"
    return f"{plan['n_epochs']} epochs ({whole} and {part} steps of one more)"


def plan_line(stage: str, plan: dict[str, Any]) -> str:
    """One line: what the budget fitted, before training proper."""
    end = plan["expected_end"].replace("T", " ").replace("Z", " UTC")
    return (f"{stage} stage, time budget {format_duration(plan['time_budget_s'])}: a step takes "
            f"{plan['step_s'] * 1000:.1f} ms ({plan['timed_steps']} timed) -> {plan['n_epochs']} epochs "
            f"of {plan['steps_per_epoch']} steps = {plan['total_steps']:,} steps (configured: "
            f"{plan['configured_n_epochs']} epochs); expected to end at {end}, "
            f"{format_duration(plan['expected_s'])} after the start")


def estimate_line(stage: str, total_steps: int, step_s: float, extra: str = "") -> str:
    """One line for an unbudgeted CPU run estimated longer than LONG_RUN_S."""
    return (f"note: the {stage} stage is estimated at about {format_duration(total_steps * step_s)} on this CPU "
            f"({total_steps:,} steps of {step_s * 1000:.0f} ms); --time-budget (e.g. --time-budget 15m) fits "
            f"the run to a time{extra}")


def plan_stage(stage: str, cfg_section: Any, *, budget_s: float, started: float, model: nn.Module,
               optimizer: torch.optim.Optimizer, bank: Any, class_ids: Tensor, local_batch: int, n_global: int,
               step: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, dict[str, Tensor]]],
               sample: Callable[[], Any] | None, probe: Callable[[], Any] | None, dist: Any,
               device: torch.device) -> dict[str, Any]:
    """Time the stage's steps, checkpoint and sample grid, and fit its plan to budget_s counted from
    `started` (time.monotonic()). Every rank times; the plan is fitted from the ranks' mean figures,
    so that every rank fits the same one."""
    from lordkit import distributed
    from lordkit.training.loop import epoch_steps

    def draw() -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.randperm(bank.n)[:local_batch].to(bank.device)
        return idx, bank.batch(idx), class_ids.index_select(0, idx)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step_s, n = time_steps(model, optimizer, draw, step, max_s=MAX_TIMING_FRACTION * budget_s, sync=sync)
    checkpoint_s = time_checkpoint(model, optimizer)
    sample_s = 0.0
    if dist.main:  # the grid and the probe run on rank 0 only
        sample_s = time_call(sample) + time_call(probe)
        model.train()
    figures = torch.tensor([step_s, checkpoint_s, sample_s * dist.world, time.monotonic() - started],
                           dtype=torch.float64, device=device)
    step_s, checkpoint_s, sample_s, spent_s = distributed.all_mean(figures, dist).tolist()
    timing = Timing(step_s=step_s, timed_steps=n, checkpoint_s=checkpoint_s, sample_s=sample_s)
    batch_size = min(getattr(cfg_section, "batch_size"), n_global)
    return fit_plan(stage, cfg_section, budget_s=budget_s, spent_s=spent_s,
                    steps_per_epoch=epoch_steps(n_global, batch_size), timing=timing,
                    has_sampler=sample is not None)


def estimate_step_s(model: nn.Module, optimizer: torch.optim.Optimizer, bank: Any, class_ids: Tensor,
                    local_batch: int, step: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, dict[str, Tensor]]],
                    ) -> float:
    """A quick figure of seconds per step (one warm-up step, then three or half a second), for the
    long-run note of an unbudgeted run; states restored as in time_steps."""
    def draw() -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.randperm(bank.n)[:local_batch].to(bank.device)
        return idx, bank.batch(idx), class_ids.index_select(0, idx)

    step_s, _ = time_steps(model, optimizer, draw, step, min_steps=3, min_s=0.5, warmup=1)
    return step_s


def announce_default(stage: str) -> Callable[[dict[str, Any]], None]:
    """Print a plan or a long-run estimate as one line on the console (stderr)."""
    def say(info: dict[str, Any]) -> None:
        from lordkit.console import console

        line = plan_line(stage, info) if "n_epochs" in info else estimate_line(stage, info["total_steps"], info["step_s"])
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return say


def fit_to_budget(stage: str, cfg: Any, budget_s: float | None, *, resume: bool, started: float, model: nn.Module,
                  optimizer: torch.optim.Optimizer, bank: Any, class_ids: Tensor, n_global: int,
                  step: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, dict[str, Tensor]]],
                  sample: Callable[[], Any] | None, probe: Callable[[], Any] | None, dist: Any,
                  device: torch.device, announce: Callable[[dict[str, Any]], None] | None) -> dict[str, Any] | None:
    """What a stage does about time before training proper: with a budget (and not resuming), time it
    and return its plan, announced on rank 0; without one, on a single CPU process with many steps,
    time a few steps and announce an estimate when it is over LONG_RUN_S (and return None)."""
    from lordkit.training.loop import epoch_steps

    section = getattr(cfg, stage)
    if resume:
        return None
    batch_size = min(section.batch_size, n_global)
    local_batch = batch_size // dist.world
    say = announce or announce_default(stage)
    if budget_s:
        plan = plan_stage(stage, section, budget_s=budget_s, started=started, model=model, optimizer=optimizer,
                          bank=bank, class_ids=class_ids, local_batch=local_batch, n_global=n_global, step=step,
                          sample=sample, probe=probe, dist=dist, device=device)
        if dist.main:
            say(plan)
        return plan
    total_steps = epoch_steps(n_global, batch_size) * section.n_epochs
    if device.type == "cpu" and not dist.enabled and total_steps >= ESTIMATE_ABOVE_STEPS:
        step_s = estimate_step_s(model, optimizer, bank, class_ids, local_batch, step)
        if total_steps * step_s > LONG_RUN_S:
            say({"stage": stage, "total_steps": total_steps, "step_s": step_s,
                 "estimate_s": total_steps * step_s})
    return None
