"""Stage 1, latent optimization: per-image content codes, per-class codes, modulation and generator
optimized jointly on reconstruction; content codes get Gaussian noise and an L2 decay."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from lordkit import distributed
from lordkit.collapse import CollapseWatch, LatentProbe
from lordkit.config import LordConfig
from lordkit.data.store import Dataset
from lordkit.distributed import Dist
from lordkit.errors import LordkitError
from lordkit.losses import MOMENT_REFERENCE_ROWS, class_moment_penalty, content_penalty, hue_penalty, make_loss
from lordkit.modeldir import (LOCK, check_data_matches, checkpoint_dir, data_record, discard_unstarted, has_checkpoint,
                              is_unstarted, load_config, save_config, save_data_record, save_state, stage_settings,
                              weights_path)
from lordkit.models import EMBEDDING_INIT, LatentModel, RegularizedEmbedding
from lordkit.training.budget import SCHEDULE_FIELDS, deadline, fit_to_budget
from lordkit.training.checkpoint import ShardedTable, full_states
from lordkit.training.data import ImageBank
from lordkit.training.init import pca_content_codes
from lordkit.training.loop import Loop, LoopSpec, sample_grid
from lordkit.training.session import adam, autocast, check_cpu_bf16, on_main, place, session, wrap_ddp
from lordkit.viz import sample_positions

CONTENT_TABLE = "content_embedding.embedding.weight"  # the per-image table, split by rank under torchrun


def prepare_model_dir(model_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to touch an existing model unless --resume or --force; with --force start it anew. A
    model dir that a training killed before its first checkpoint left (config, data record, metrics
    only: lordkit.modeldir.is_unstarted) holds nothing to continue and is started anew as well."""
    existing = [c for c in model_dir.iterdir() if c.name != LOCK] if model_dir.exists() else []
    if existing and not resume:
        if not force and not is_unstarted(model_dir):
            raise LordkitError(f"model {model_dir} already exists; pass --resume to continue it "
                               "or --force to train it anew")
        for child in existing:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def _start_model_dir(ds: Dataset, model_dir: Path, cfg: LordConfig, *, data_name: str, resume: bool,
                     force: bool, fresh: dict[str, bool]) -> None:
    """Rank 0: check what a resume continues, or write config.json and data.json of a new model
    (and set fresh["files"]: from here on the model dir holds only this run's files)."""
    prepare_model_dir(model_dir, resume=resume, force=force)
    if resume:
        saved = load_config(model_dir)
        if weights_path(model_dir, "latent").exists() and not checkpoint_dir(model_dir, "latent").exists():
            raise LordkitError(f"stage 1 of {model_dir} is complete; nothing to resume")
        if is_unstarted(model_dir):
            raise LordkitError(f"model {model_dir} has no checkpoint to resume from (its training stopped before "
                               "the first one); train it again without --resume")
        check_data_matches(ds, saved, "stage 1", n_imgs_must_match=True)
        return
    fresh["files"] = True
    save_config(model_dir, cfg.replace(model=dict(n_imgs=len(ds), n_classes=ds.n_classes, img_size=ds.meta.img_size,
                                                  channels=ds.meta.channels)))
    save_data_record(model_dir, data_record(ds, data_name or ds.path.name))


@contextlib.contextmanager
def _removed_unless_checkpointed(model_dir: Path, d: Dist, created: bool, fresh: dict[str, bool]):
    """Rank 0: when a new model's training stops before its first checkpoint (missing VGG weights, a
    bad setting, no memory, a NaN, Ctrl-C), remove what it wrote, and the model dir if this run made
    it, so that the retry finds no model of that name."""
    try:
        yield
    except BaseException:
        if d.main and (created or fresh["files"]) and not has_checkpoint(model_dir, "latent"):
            discard_unstarted(model_dir, remove_dir=created)
        raise


class _SharedLatent(nn.Module):
    """The stage-1 parts every rank shares (wrapped in DDP): class table, modulation, generator."""

    def __init__(self, model: LatentModel):
        super().__init__()
        self.class_embedding = model.class_embedding
        self.modulation = model.modulation
        self.generator = model.generator

    def forward(self, content_code: Tensor, class_id: Tensor) -> Tensor:
        return self.generator(content_code, self.modulation(self.class_embedding(class_id)))


class _SampleGrid:
    """Stage 1's sample grid: the codes of fixed images, every content code in every class."""

    def __init__(self, model: LatentModel, bank: ImageBank, class_ids: Tensor, fixed: Tensor):
        self.model, self.bank, self.class_ids, self.fixed = model, bank, class_ids, fixed

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        model, fixed = self.model, self.fixed
        model.eval()
        content_code = model.content_embedding(fixed)  # (K, content_dim)
        params = model.modulation(model.class_embedding(self.class_ids[fixed]))
        k = len(fixed)
        out = model.generator(content_code.repeat(k, 1), params.repeat_interleave(k, 0))  # (K*K, C, H, W)
        return sample_grid(self.bank.batch(fixed), out)


def _build_model(ds: Dataset, cfg: LordConfig, d: Dist, *, resume: bool) -> tuple[LatentModel, np.ndarray]:
    """The stage-1 model at its start and the images this rank trains: seeded the same on every rank and
    for any world size; under torchrun it keeps only this rank's rows of the content table."""
    lc = cfg.latent
    owned = distributed.owned_indices(len(ds), d, lc.seed)
    torch.manual_seed(lc.seed)
    model = LatentModel(cfg.model)
    if lc.content_init != EMBEDDING_INIT:
        nn.init.uniform_(model.content_embedding.embedding.weight, -lc.content_init, lc.content_init)
    if lc.pca_init > 0 and not resume:  # a resume loads its codes from the checkpoint
        codes = pca_content_codes(ds, cfg.model.content_dim, lc.pca_init, lc.seed, lc.pca_features,
                                  blur=lc.pca_blur)
        model.content_embedding.embedding.weight.data.copy_(torch.from_numpy(codes))
    if d.enabled:  # keep only this rank's rows of the content table
        full_table = model.content_embedding.embedding.weight.detach()
        model.content_embedding = RegularizedEmbedding(len(owned), cfg.model.content_dim)
        model.content_embedding.embedding.weight.data.copy_(full_table[torch.from_numpy(owned)])
        torch.manual_seed(lc.seed + d.rank)  # independent content noise per rank
    return model, owned


def train_latent(
    ds: Dataset,
    model_dir: Path,
    cfg: LordConfig,
    *,
    data_name: str = "",  # recorded in data.json (default: the dataset dir's name)
    device: str = "auto",  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True,  # bf16 autocast on CUDA (ignored on CPU)
    cpu_bf16: bool = False,  # bf16 autocast on a CPU with native bf16 (AVX-512 BF16, AMX)
    compile: bool = False,  # torch.compile the generator path
    resume: bool = False,  # continue from checkpoints/latent
    force: bool = False,  # replace an existing model dir
    vgg_weights: str | None = None,  # torchvision VGG16 file for loss "vgg" (else the hub cache)
    show_progress: bool = True,  # a progress bar on rank 0
    tensorboard: bool = True,  # also log to TensorBoard when it is installed
    on_step: Callable[[int], None] | None = None,  # called with the step number after every step
    time_budget_s: float | None = None,  # fit n_epochs and its schedule to end within this (lordkit.training.budget)
    budget_start: float | None = None,  # time.monotonic() the budget counts from (default: this call's start)
    announce: Callable[[dict[str, Any]], None] | None = None,  # gets the plan, or a long-run estimate (default: print)
) -> dict[str, Any]:
    """Stage 1: latent optimization. Writes config.json, data.json, latent.safetensors.

    Under torchrun each rank trains the content codes of its own images (see lordkit.distributed)."""
    budget_start = time.monotonic() if budget_start is None else budget_start
    model_dir = Path(model_dir)
    created = not resume and not os.path.lexists(model_dir)  # made by this run: removed if it stops before a checkpoint
    fresh = {"files": False}
    with session(model_dir, device) as (d, dev), _removed_unless_checkpointed(model_dir, d, created, fresh):
        check_cpu_bf16(cpu_bf16, dev)
        # Set up the model dir: rank 0 decides, every rank reads what it decided.
        on_main(d, lambda: _start_model_dir(ds, model_dir, cfg, data_name=data_name, resume=resume, force=force,
                                            fresh=fresh))
        cfg = load_config(model_dir)
        lc = cfg.latent
        loss_fn = make_loss(lc.loss, vgg_weights).to(dev)

        # Build the model: the same seeded init on every rank and for any world size.
        model, owned = _build_model(ds, cfg, d, resume=resume)
        model = place(model, dev)
        optimizer = adam([
            {"params": list(model.generator.parameters()) + list(model.modulation.parameters()), "lr": lc.lr_generator},
            {"params": list(model.content_embedding.parameters()) + list(model.class_embedding.parameters()),
             "lr": lc.lr_latent},
        ], lc.betas, dev)
        bank = ImageBank(ds, dev, rows=owned)
        class_ids = torch.from_numpy(np.asarray(ds.class_ids)[owned]).to(dev)
        content_std = cfg.model.content_std
        shared = wrap_ddp(_SharedLatent(model), d, dev)
        generate = torch.compile(shared) if compile else shared

        hue_term = lc.hue_weight > 0 and ds.meta.channels == 3  # one-channel images have no hue

        def step(idx: Tensor, imgs: Tensor, cls: Tensor, epoch: float) -> tuple[Tensor, dict[str, Tensor]]:
            # Content noise, optionally ramped up from 0 over the first noise_warmup_epochs.
            ramp = min(1.0, epoch / lc.noise_warmup_epochs) if lc.noise_warmup_epochs > 0 else 1.0
            with autocast(dev, amp, cpu_bf16):
                content_code = model.content_embedding(idx, content_std * ramp)  # (B, content_dim)
                out = generate(content_code, cls)  # (B, C, H, W)
                rec = loss_fn(out, imgs)
            decay = content_penalty(content_code)
            loss, parts = rec + lc.content_decay * decay, {"rec": rec, "decay": decay}
            if lc.class_moments > 0:
                table = model.content_embedding.embedding.weight
                reference = None
                if len(table) > MOMENT_REFERENCE_ROWS:
                    reference = torch.randint(len(table), (MOMENT_REFERENCE_ROWS,), device=table.device)
                moments = class_moment_penalty(table[idx], idx, table, class_ids, reference)
                loss, parts["moments"] = loss + lc.class_moments * moments, moments
            if hue_term:
                hue = hue_penalty(out, imgs)
                loss, parts["hue"] = loss + lc.hue_weight * hue, hue
            return loss, parts

        fixed = torch.from_numpy(sample_positions(np.asarray(ds.class_ids)[owned], ds.n_classes)).to(dev)
        sample = _SampleGrid(model, bank, class_ids, fixed)

        # Collapse probe: fixed seeded images, measured whenever a sample grid is due.
        probe = LatentProbe(model, np.asarray(ds.class_ids)[owned], bank, lc.seed)

        # Fit the stage to the time budget; a resume keeps the plan its config.json holds.
        plan = fit_to_budget("latent", cfg, time_budget_s, resume=resume, started=budget_start, model=model,
                             optimizer=optimizer, bank=bank, class_ids=class_ids, n_global=len(ds), step=step,
                             sample=sample, probe=probe, dist=d, device=dev, announce=announce)
        if plan is not None:
            cfg = cfg.replace(latent={**{k: plan[k] for k in SCHEDULE_FIELDS}, "plan": plan})
            on_main(d, lambda: save_config(model_dir, cfg))
            lc = cfg.latent  # the step function reads the fitted noise warm-up through lc

        # Train.
        table = ShardedTable(CONTENT_TABLE, len(ds), lc.seed, d) if d.enabled else None
        spec = LoopSpec(stage="latent", model=model, optimizer=optimizer, n_epochs=lc.n_epochs,
                        total_steps=(lc.plan or {}).get("total_steps"),
                        batch_size=lc.batch_size, seed=lc.seed, log_every=lc.log_every, lr_min=lc.lr_min,
                        step=step, sample=sample, sample_every_epochs=lc.sample_every_epochs,
                        n_global=len(ds), dist=d, table=table,
                        collapse=CollapseWatch.for_stage("latent", lc, probe), settings=stage_settings(cfg, "latent"),
                        deadline=deadline("latent", plan, started=budget_start, model_dir=model_dir, cfg=cfg,
                                          dist=d))
        result = Loop(spec, model_dir, bank, class_ids, resume=resume, tensorboard=tensorboard).run(
            show_progress=show_progress, on_step=on_step)
        cfg = spec.deadline.cfg if spec.deadline is not None else cfg  # refitted on the way, if it was

        # Save the weights, the content table gathered in image order.
        final_state, _ = full_states(model, optimizer, table)
        if d.main:
            save_state(final_state, weights_path(model_dir, "latent"))
        distributed.barrier(d)
        return {**result, "plan": cfg.latent.plan} if cfg.latent.plan else result
