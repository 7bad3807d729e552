"""Training commands: `train` (stage 1, latent optimization) and `train-encoders` (stage 2)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from lordkit.fsutil import data_dir, model_dir

from .common import get_base, handle_errors, say

SET_HELP = ("Override a config field, repeatable: --set latent.batch_size=64 --set model.content_dim=64. "
            "Sections: model, latent (stage 1), amortized (stage 2); see config.json of a model for every field.")


def _main_rank() -> bool:
    """Under torchrun only rank 0 reports (the others train quietly)."""
    from lordkit.distributed import from_env

    return from_env().main


def _given(**values: Any) -> dict[str, Any]:
    """Config field values of the options the user gave (those not None)."""
    return {name: value for name, value in values.items() if value is not None}


BUDGET_HELP = ("Fit the stage to this much time, counted from the command's start: 90s, 15m, 2h, 1h30m. The "
               "first steps are timed, then the steps (whole epochs and part of one more, with the noise warm-up and "
               "sample cadence) are fitted and refitted to the pace while it trains; the plan is printed and stored "
               "in config.json. A --resume keeps the plan.")


def _budget(text: str | None, epochs: int | None, resume: bool) -> float | None:
    """Seconds of --time-budget (None without one); refuses it next to --epochs, notes it on --resume."""
    from lordkit.errors import LordkitError
    from lordkit.training.budget import parse_duration

    if text is None:
        return None
    seconds = parse_duration(text)
    if epochs is not None:
        raise LordkitError("--epochs and --time-budget both set the number of epochs; give one of them")
    if resume:
        if _main_rank():
            say("--resume keeps the plan the run was started with; --time-budget is not applied again")
        return None
    return seconds


def _announcer(stage: str, preset_name: str | None = None):
    """What the CLI says before training proper: the fitted plan, or the long-run note."""
    from lordkit.training.budget import estimate_line, plan_line

    def announce(info: dict[str, Any]) -> None:
        if "n_epochs" in info:
            say(plan_line(stage, info))
            return
        extra = " and --preset small trains a small model" if preset_name not in (None, "small") else ""
        say(estimate_line(stage, info["total_steps"], info["step_s"], extra))

    return announce


def _amortized_settings(items: list[str]) -> dict[str, Any]:
    """`--set amortized.field=value` items as typed amortized field values (parsed by field type)."""
    from lordkit.config import LordConfig
    from lordkit.errors import LordkitError

    bad = [item for item in items if not item.strip().startswith("amortized.")]
    if bad:
        raise LordkitError(f"train-encoders only takes amortized.* settings, got {bad[0]!r}")
    parsed = LordConfig().apply_overrides(items).amortized
    names = [item.partition("=")[0].strip().partition(".")[2] for item in items]
    return {name: getattr(parsed, name) for name in names}


@handle_errors
def train(
    ctx: typer.Context,
    data_name: Annotated[str, typer.Option("--data-name", "-dn", help="Training dataset under <base-dir>/data/.")],
    model_name: Annotated[str, typer.Option("--model-name", "-mn", help="Model to create under <base-dir>/models/.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Start from this preset: small (small data, CPU; synthetic is an alias) or a dataset id for the paper's settings (default: chosen from the data, and printed).")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="vgg (pixel L1 + VGG16 features, the paper's), l1, l2, l1+l2 (pixel only, offline) or lap1 (Laplacian pyramid L1, offline). Sets both stages.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Stage-1 epochs (latent.n_epochs); the noise warm-up and the sample cadence keep their share of the run unless set with --set.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Stage-1 batch size (latent.batch_size).")] = None,
    vgg_weights: Annotated[Optional[str], typer.Option("--vgg-weights", help="torchvision's vgg16-397923af.pth (default: torch hub cache, downloaded when online).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA.")] = True,
    cpu_bf16: Annotated[bool, typer.Option("--cpu-bf16", help="bf16 autocast on the CPU (CPUs with AVX-512 BF16 or AMX).")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the generator.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint (one killed after its last checkpoint is finished: weights, last sample grid).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Delete an existing model of that name and train anew.")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard/--no-tensorboard", help="Also log to TensorBoard when it is installed.")] = True,
    stop_on_collapse: Annotated[Optional[bool], typer.Option("--stop-on-collapse", help="Stop with an error (exit 2, checkpoint kept) when the output stops depending on the content code or class (latent.stop_on_collapse).")] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help=BUDGET_HELP)] = None,
) -> None:
    """Stage 1: learn a content code per image, a class code per class, and the generator."""
    from lordkit.clock import command_start

    started = command_start()
    budget_s = _budget(time_budget, epochs, resume)
    from lordkit.config import choose_preset, epoch_schedule, fit_to_images, fit_to_length
    from lordkit.data.sources import dataset_ids
    from lordkit.data.store import Dataset
    from lordkit.training import train_latent

    base = get_base(ctx)
    ds = Dataset(data_dir(base, data_name))
    preset_name, start, why = choose_preset(ds.meta.dataset_id, len(ds), preset, known=dataset_ids())
    start, length = fit_to_length(start, preset_name, len(ds))
    why = f"{why}; {length}" if length else why
    cfg = fit_to_images(start, ds.meta.img_size, ds.meta.channels).apply_overrides(set_ or [])
    cfg = cfg.replace(latent=_given(loss=loss, batch_size=batch_size, stop_on_collapse=stop_on_collapse),
                      amortized=_given(loss=loss))
    if epochs is not None:  # the run's length: its noise warm-up and sample cadence keep their share
        given = {item.partition("=")[0].strip() for item in set_ or []}
        cfg = cfg.replace(latent={k: v for k, v in epoch_schedule("latent", cfg.latent, epochs).items()
                                  if k == "n_epochs" or f"latent.{k}" not in given})
    out = model_dir(base, model_name)
    if _main_rank() and not resume:  # a resume continues with the config it saved
        say(why)
    result = train_latent(ds, out, cfg, data_name=data_name, device=device, amp=amp, cpu_bf16=cpu_bf16, compile=compile_,
                          resume=resume, force=force, vgg_weights=vgg_weights, tensorboard=tensorboard,
                          time_budget_s=budget_s, budget_start=started, announce=_announcer("latent", preset_name))
    if _main_rank():
        say(f"stage 1 done: {result['steps']} steps, loss {result.get('loss', float('nan')):.4f}; model in {out}")


@handle_errors
def train_encoders(
    ctx: typer.Context,
    data_name: Annotated[str, typer.Option("--data-name", "-dn", help="The dataset stage 1 was trained on.")],
    model_name: Annotated[str, typer.Option("--model-name", "-mn", help="Model trained by `lordkit train`.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override an amortized.* field, repeatable: --set amortized.batch_size=64.")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="vgg, l1, l2, l1+l2 or lap1 (amortized.loss).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Stage-2 epochs (amortized.n_epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Stage-2 batch size (amortized.batch_size).")] = None,
    vgg_weights: Annotated[Optional[str], typer.Option("--vgg-weights", help="torchvision's vgg16-397923af.pth.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA.")] = True,
    cpu_bf16: Annotated[bool, typer.Option("--cpu-bf16", help="bf16 autocast on the CPU (CPUs with AVX-512 BF16 or AMX).")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the amortized model.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted stage 2 (one killed after its last checkpoint is finished: weights, last sample grid).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train encoders anew even if they exist.")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard/--no-tensorboard", help="Also log to TensorBoard when it is installed.")] = True,
    stop_on_collapse: Annotated[Optional[bool], typer.Option("--stop-on-collapse", help="Stop with an error (exit 2, checkpoint kept) when the output stops depending on the encoded content or class (amortized.stop_on_collapse).")] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help=BUDGET_HELP)] = None,
) -> None:
    """Stage 2: train content and class encoders to the stage-1 codes (any new image can then be encoded)."""
    from lordkit.clock import command_start

    started = command_start()
    budget_s = _budget(time_budget, epochs, resume)
    from lordkit.data.store import Dataset
    from lordkit.training import train_amortized

    base = get_base(ctx)
    ds = Dataset(data_dir(base, data_name))
    changes = {**_amortized_settings(set_ or []),
               **_given(loss=loss, n_epochs=epochs, batch_size=batch_size, stop_on_collapse=stop_on_collapse)}
    out = model_dir(base, model_name)
    result = train_amortized(ds, out, changes=changes, device=device, amp=amp, cpu_bf16=cpu_bf16, compile=compile_,
                             resume=resume, force=force, vgg_weights=vgg_weights, tensorboard=tensorboard,
                             time_budget_s=budget_s, budget_start=started, announce=_announcer("amortized"))
    if _main_rank():
        say(f"stage 2 done: {result['steps']} steps, loss {result.get('loss', float('nan')):.4f}; model in {out}")


@handle_errors
def import_reference(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="Model dir written by the public PyTorch LORD code (config.pkl, latent.pth, amortized.pth).")],
    model_name: Annotated[str, typer.Option("--model-name", "-mn", help="Name of the new lordkit model.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model of that name.")] = False,
) -> None:
    """Convert a model trained with the original LORD code into a lordkit model (export, evaluate, transfer)."""
    from pathlib import Path

    from lordkit.errors import LordkitError
    from lordkit.reference import import_reference as read
    from lordkit.modeldir import write_imported_model

    out = model_dir(get_base(ctx), model_name)
    if out.exists() and not force:  # before reading weights that may be large
        raise LordkitError(f"model {out} already exists; pass --force to replace it")
    cfg, latent, amortized = read(src)
    write_imported_model(out, cfg, latent, amortized, source=str(Path(src).resolve()), force=force)
    stages = "stage 1 and encoders" if amortized is not None else "stage 1 only (no amortized.pth)"
    say(f"imported {stages}: {cfg.model.n_imgs} content codes, {cfg.model.n_classes} classes, "
        f"{cfg.model.img_size}px; model in {out}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("train-encoders")(train_encoders)
    app.command("import-reference")(import_reference)
