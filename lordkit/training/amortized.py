"""Stage 2, amortization: content and class encoders learn to output the stage-1 codes while the
generator (initialised from stage 1) is fine-tuned on reconstruction."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from lordkit import distributed
from lordkit.collapse import CollapseWatch, EncoderProbe
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError
from lordkit.losses import make_loss
from lordkit.distributed import Dist
from lordkit.fsutil import atomic_write_bytes
from lordkit.modeldir import (check_data_matches, checkpoint_dir, checkpoint_progress, config_path, is_model_dir,
                              load_config, load_latent, save_config, save_weights, stage_settings, stage_weights,
                              weights_path)
from lordkit.models import AmortizedModel, LatentModel, amortized_from_latent
from lordkit.training.budget import deadline, fit_to_budget
from lordkit.training.data import ImageBank
from lordkit.training.loop import Loop, LoopSpec, sample_grid
from lordkit.training.session import adam, autocast, check_cpu_bf16, on_main, place, session, wrap_ddp
from lordkit.viz import sample_positions


def _start_stage(ds: Dataset, model_dir: Path, changes: dict[str, Any] | None, *, resume: bool, force: bool) -> None:
    """Rank 0: check that stage 1 is there and the data matches, and save the stage-2 settings."""
    cfg = load_config(model_dir)
    if changes:
        cfg = cfg.replace(amortized=changes)
    check_data_matches(ds, cfg, "stage 2", n_imgs_must_match=True)
    stage_weights(model_dir, "latent", cfg)  # written from stage 1's last checkpoint if its run was killed after it
    done = weights_path(model_dir, "amortized").exists()
    if done and not (resume or force):
        raise LordkitError(f"encoders of {model_dir} are already trained; pass --force to train them anew")
    if not resume:
        ckpt = checkpoint_dir(model_dir, "amortized")
        if ckpt.exists() and not force:
            progress = checkpoint_progress(model_dir, "amortized") or {}
            if progress.get("step", -1) == progress.get("total_steps"):
                raise LordkitError(f"stage 2 of {model_dir} was stopped after its last checkpoint ({ckpt}); pass "
                                   "--resume to finish it or --force to start it anew")
            raise LordkitError(f"{ckpt} holds an unfinished stage 2; pass --resume to continue it "
                               "or --force to start it anew")
        # The encoders' input centring belongs to the run that trains them (a resume keeps its own).
        cfg = cfg.replace(model={"encoder_input_mean": channel_means(ds) if cfg.amortized.centre_inputs else ()})
        save_config(model_dir, cfg)


def channel_means(ds: Dataset, chunk: int = 4096) -> tuple[float, ...]:
    """Every image's mean value per channel, averaged over the dataset (0-1 scale), rounded to 1e-6."""
    sums = np.zeros(ds.meta.channels, np.float64)
    for start in range(0, len(ds), chunk):
        sums += ds.images[start:start + chunk].sum(axis=(0, 1, 2), dtype=np.float64)
    pixels = max(len(ds), 1) * ds.meta.img_size ** 2
    return tuple(round(float(v), 6) for v in sums / (255.0 * pixels))


@contextlib.contextmanager
def _config_restored_unless_checkpointed(model_dir: Path, d: Dist, resume: bool):
    """Rank 0: when stage 2 stops before its first checkpoint (missing VGG weights, a bad setting, no
    memory, a NaN), put back the config.json it found, so that its settings are not left behind."""
    previous = config_path(model_dir).read_bytes() if d.main and not resume else None
    before = checkpoint_progress(model_dir, "amortized") if previous is not None else None
    try:
        yield
    except BaseException:
        path = config_path(model_dir)
        if (previous is not None and checkpoint_progress(model_dir, "amortized") == before
                and path.read_bytes() != previous):
            atomic_write_bytes(path, previous)
        raise


class _SampleGrid:
    """Stage 2's sample grid: fixed images, each one's content in each one's class, through the encoders."""

    def __init__(self, model: AmortizedModel, bank: ImageBank, fixed: Tensor):
        self.model, self.bank, self.fixed = model, bank, fixed

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        self.model.eval()
        imgs = self.bank.batch(self.fixed)  # (K, C, H, W)
        k = len(self.fixed)
        out, _, _ = self.model.convert(imgs.repeat(k, 1, 1, 1), imgs.repeat_interleave(k, 0))  # (K*K, C, H, W)
        return sample_grid(imgs, out)


def class_swap_terms(latent: LatentModel, model: AmortizedModel, content_codes: Tensor, n_classes: int,
                     cast: Callable[[], Any]) -> tuple[Tensor, Tensor]:
    """The class-swap terms of stage 2 (amortized.swap_weight): the stage-1 generator (frozen) draws
    each content code in a class drawn at random; the squared error of the content encoder's code of
    that image against the content code, and of the class encoder's code against the drawn class's.
    `cast`: the autocast context of the step."""
    with torch.no_grad(), cast():
        classes = torch.randint(0, n_classes, (len(content_codes),), device=content_codes.device)
        class_codes = latent.class_embedding(classes).float()
        drawn = latent.generator(content_codes, latent.modulation(class_codes)).float()
    with cast():
        content_out, class_out = model.content_encoder(drawn), model.class_encoder(drawn)
    return ((content_out.float() - content_codes).pow(2).mean(), (class_out.float() - class_codes).pow(2).mean())


def train_amortized(
    ds: Dataset,
    model_dir: Path,
    *,
    changes: dict[str, Any] | None = None,  # amortized-section field values, e.g. {"batch_size": 64} (saved)
    device: str = "auto",  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True,  # bf16 autocast on CUDA (ignored on CPU)
    cpu_bf16: bool = False,  # bf16 autocast on a CPU with native bf16 (AVX-512 BF16, AMX)
    compile: bool = False,  # torch.compile the amortized model
    resume: bool = False,  # continue from checkpoints/amortized (changes are not applied)
    force: bool = False,  # retrain encoders that are already trained
    vgg_weights: str | None = None,  # torchvision VGG16 file for loss "vgg" (else the hub cache)
    show_progress: bool = True,  # a progress bar on rank 0
    tensorboard: bool = True,  # also log to TensorBoard when it is installed
    on_step: Callable[[int], None] | None = None,  # called with the step number after every step
    time_budget_s: float | None = None,  # fit n_epochs to end within this (lordkit.training.budget)
    budget_start: float | None = None,  # time.monotonic() the budget counts from (default: this call's start)
    announce: Callable[[dict[str, Any]], None] | None = None,  # gets the plan, or a long-run estimate (default: print)
) -> dict[str, Any]:
    """Stage 2: train encoders to the stage-1 codes; writes amortized.safetensors."""
    budget_start = time.monotonic() if budget_start is None else budget_start
    if not resume:  # a plan belongs to the run that fitted it: a new run without a budget has none
        changes = {**(changes or {}), "plan": {}}
    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        load_config(model_dir)  # one clear "model not found" before any lock file is created
    with session(model_dir, device) as (d, dev), _config_restored_unless_checkpointed(model_dir, d, resume):
        check_cpu_bf16(cpu_bf16, dev)
        # Check stage 1 and save the settings: rank 0 decides, every rank reads what it decided.
        on_main(d, lambda: _start_stage(ds, model_dir, changes, resume=resume, force=force))
        cfg = load_config(model_dir)
        ac = cfg.amortized
        loss_fn = make_loss(ac.loss, vgg_weights).to(dev)

        # Build the model from stage 1, whose codes are the targets.
        latent = load_latent(model_dir, cfg)  # eval mode, CPU
        for p in latent.parameters():
            p.requires_grad_(False)
        torch.manual_seed(ac.seed)
        model = place(amortized_from_latent(latent, cfg.model), dev)
        latent = latent.to(dev).eval()
        optimizer = adam([{"params": list(model.parameters()), "lr": ac.lr}], ac.betas, dev)
        owned = distributed.owned_indices(len(ds), d, ac.seed)
        owned_t = torch.from_numpy(owned).to(dev)
        bank = ImageBank(ds, dev, rows=owned)
        class_ids = torch.from_numpy(np.asarray(ds.class_ids)[owned]).to(dev)
        wrapped = wrap_ddp(model, d, dev)
        forward = torch.compile(wrapped) if compile else wrapped

        def step(idx: Tensor, imgs: Tensor, cls: Tensor, epoch: float) -> tuple[Tensor, dict[str, Tensor]]:
            with torch.no_grad():
                content_target = latent.content_embedding(owned_t[idx])  # clean stage-1 codes (eval: no noise)
                class_target = latent.class_embedding(cls)
            with autocast(dev, amp, cpu_bf16):
                out, content_code, class_code = forward(imgs)
                rec = loss_fn(out, imgs)
            content_mse = (content_code.float() - content_target).pow(2).mean()
            class_mse = (class_code.float() - class_target).pow(2).mean()
            loss = rec + ac.content_weight * content_mse + ac.class_weight * class_mse
            metrics = {"rec": rec, "content_mse": content_mse, "class_mse": class_mse}
            if ac.swap_weight:
                swap_content_mse, swap_class_mse = class_swap_terms(
                    latent, model, content_target, cfg.model.n_classes, lambda: autocast(dev, amp, cpu_bf16))
                loss = loss + ac.swap_weight * (ac.content_weight * swap_content_mse + ac.class_weight * swap_class_mse)
                metrics.update(swap_content_mse=swap_content_mse, swap_class_mse=swap_class_mse)
            return loss, metrics

        fixed = torch.from_numpy(sample_positions(np.asarray(ds.class_ids)[owned], ds.n_classes)).to(dev)
        sample = _SampleGrid(model, bank, fixed)

        # Collapse probe: contents from fixed images, classes from one fixed image of each probed class.
        probe = EncoderProbe(model, np.asarray(ds.class_ids)[owned], bank, ac.seed)

        # Fit the stage to the time budget; a resume keeps the plan its config.json holds.
        plan = fit_to_budget("amortized", cfg, time_budget_s, resume=resume, started=budget_start, model=model,
                             optimizer=optimizer, bank=bank, class_ids=class_ids, n_global=len(ds), step=step,
                             sample=sample, probe=probe, dist=d, device=dev, announce=announce)
        if plan is not None:
            cfg = cfg.replace(amortized={"n_epochs": plan["n_epochs"], "plan": plan})
            on_main(d, lambda: save_config(model_dir, cfg))
            ac = cfg.amortized

        # Train.
        spec = LoopSpec(stage="amortized", model=model, optimizer=optimizer, n_epochs=ac.n_epochs,
                        total_steps=(ac.plan or {}).get("total_steps"),
                        batch_size=ac.batch_size, seed=ac.seed, log_every=ac.log_every, lr_min=ac.lr_min,
                        step=step, sample=sample, n_global=len(ds), dist=d,
                        collapse=CollapseWatch.for_stage("amortized", ac, probe),
                        settings=stage_settings(cfg, "amortized"),
                        deadline=deadline("amortized", plan, started=budget_start, model_dir=model_dir, cfg=cfg,
                                          dist=d))
        result = Loop(spec, model_dir, bank, class_ids, resume=resume, tensorboard=tensorboard).run(
            show_progress=show_progress, on_step=on_step)
        cfg = spec.deadline.cfg if spec.deadline is not None else cfg  # refitted on the way, if it was

        # Save the weights.
        if d.main:
            save_weights(model, weights_path(model_dir, "amortized"))
        distributed.barrier(d)
        return {**result, "plan": cfg.amortized.plan} if cfg.amortized.plan else result
