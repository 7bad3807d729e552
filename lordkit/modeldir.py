"""The model dir: the one owner of its on-disk format. Every reader and writer goes through here.

A model dir holds:
    config.json                 LordConfig (model, latent, amortized sections)
    data.json                   what it was trained on: data name, class names, image size, ...
    latent.safetensors          stage-1 weights, written when stage 1 completes
    amortized.safetensors       stage-2 weights, written when stage 2 completes
    checkpoints/<stage>/        model.safetensors + state.pt (optimizer, scheduler, RNG, step) +
                                progress.json: the last complete checkpoint, replaced as one unit.
                                The one written after a stage's last step holds exactly the weights
                                the stage then writes: a run killed between the two is finished from
                                it (`stage_weights`)
    samples/<stage>-epoch-NNNN.png  transfer grids (rows: class source, columns: content source)
    metrics.jsonl               one JSON object per logged step, appended
    tensorboard/<stage>/        TensorBoard event files, when TensorBoard is installed
    eval/<data>.json, eval/<data>-transfer.png   written by `lordkit evaluate`
    demo-*                      what `lordkit demo` adds: transfer grid and video, summary
    .lock                       held by the process training into the dir

Training, export, evaluation, the benchmarks and the import of reference checkpoints all open
models through these functions, never through the trainer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from lordkit.config import LordConfig, ModelConfig
from lordkit.errors import LordkitError, errno_in_message
from lordkit.fsutil import atomic_open, atomic_write_json, current_umask, read_json, recover_tree, staged_dir, temp_file

if TYPE_CHECKING:  # torch stays out of module import: the runtime imports lordkit without torch
    import torch
    from torch import Tensor, nn

    from lordkit.data.store import Dataset
    from lordkit.models import AmortizedModel, LatentModel

STAGES = ("latent", "amortized")
CONFIG = "config.json"
DATA_RECORD = "data.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
TENSORBOARD = "tensorboard"
EVAL = "eval"
CLASS_TABLE_KEY = "class_embedding.weight"  # stage-1 class codes in latent.safetensors
_CHECKPOINT_WEIGHTS = "model.safetensors"
_CHECKPOINT_STATE = "state.pt"
_CHECKPOINT_PROGRESS = "progress.json"


# ----------------------------------------------------------------------------------------------
# Paths.


def weights_path(model_dir: Path, stage: str) -> Path:
    return Path(model_dir) / f"{stage}.safetensors"


def checkpoint_dir(model_dir: Path, stage: str) -> Path:
    return Path(model_dir) / CHECKPOINTS / stage


def has_checkpoint(model_dir: Path, stage: str) -> bool:
    recover_tree(checkpoint_dir(model_dir, stage), depth=1)  # a swap cut short by a crash is repaired first
    return (checkpoint_dir(model_dir, stage) / _CHECKPOINT_STATE).is_file()


def is_model_dir(model_dir: Path) -> bool:
    return config_path(model_dir).is_file()


def config_path(model_dir: Path) -> Path:
    return Path(model_dir) / CONFIG


def data_record_path(model_dir: Path) -> Path:
    return Path(model_dir) / DATA_RECORD


def stage1_files(model_dir: Path) -> tuple[Path, Path, Path]:
    """What stage 2 starts from: config.json, data.json and latent.safetensors."""
    return config_path(model_dir), data_record_path(model_dir), weights_path(model_dir, "latent")


def metrics_path(model_dir: Path) -> Path:
    return Path(model_dir) / METRICS


def lock_path(model_dir: Path) -> Path:
    return Path(model_dir) / LOCK


def samples_dir(model_dir: Path) -> Path:
    return Path(model_dir) / SAMPLES


def sample_path(model_dir: Path, stage: str, epoch: int) -> Path:
    """The sample grid of a stage after `epoch` epochs."""
    return samples_dir(model_dir) / f"{stage}-epoch-{epoch:04d}.png"


def tensorboard_dir(model_dir: Path, stage: str) -> Path:
    return Path(model_dir) / TENSORBOARD / stage


def eval_json_path(model_dir: Path, data_name: str) -> Path:
    """Where `lordkit evaluate` writes its results on data `data_name`."""
    return Path(model_dir) / EVAL / f"{data_name}.json"


def eval_grid_path(model_dir: Path, data_name: str) -> Path:
    """Where `lordkit evaluate` writes its transfer grid on data `data_name`."""
    return Path(model_dir) / EVAL / f"{data_name}-transfer.png"


def demo_path(model_dir: Path, name: str) -> Path:
    """demo-<name>: a file `lordkit demo` adds ("transfer.png", "transfer.mp4", "summary.json")."""
    return Path(model_dir) / f"demo-{name}"


# ----------------------------------------------------------------------------------------------
# Metrics.


def read_metrics(model_dir: Path) -> list[dict[str, Any]]:
    """Every record of a model's metrics.jsonl (none if it has none); a torn last line is skipped."""
    path = metrics_path(model_dir)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


# ----------------------------------------------------------------------------------------------
# Config and data record.


def load_config(model_dir: Path) -> LordConfig:
    """The model's config; opening a model first repairs what crashed writers left in and beside it."""
    recover_tree(model_dir)
    path = config_path(model_dir)
    if not path.is_file():
        raise LordkitError(f"model not found: {model_dir} (no {CONFIG}; train it with `lordkit train`)")
    return LordConfig.load(path)


def save_config(model_dir: Path, cfg: LordConfig) -> None:
    cfg.save(config_path(model_dir))


def data_record(ds: "Dataset", data_name: str) -> dict[str, Any]:
    """What a model was trained on, as written to data.json."""
    m = ds.meta
    return {"data_name": data_name, "dataset_id": m.dataset_id, "n_imgs": m.n_imgs, "n_classes": m.n_classes,
            "class_names": m.class_names, "img_size": m.img_size, "channels": m.channels,
            "content_factors": m.content_factors, "face_template": m.face_template,
            "content_grid": m.extra.get("content_grid"), "path": str(ds.path)}


def bare_data_record(cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """data.json of a model that was not trained here (imported, random): numbered classes, no data."""
    return {"data_name": None, "dataset_id": None, "n_imgs": cfg.n_imgs, "n_classes": cfg.n_classes,
            "class_names": [str(i) for i in range(cfg.n_classes)], "img_size": cfg.img_size,
            "channels": cfg.channels, "content_factors": [], "face_template": None, "content_grid": None, **extra}


def save_data_record(model_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(data_record_path(model_dir), record)


def load_data_record(model_dir: Path) -> dict[str, Any]:
    """data.json, or {} for a model dir written before it existed."""
    path = data_record_path(model_dir)
    if not path.is_file():
        return {}
    record = read_json(path, "model data record")
    if not isinstance(record, dict):
        raise LordkitError(f"{path} must hold a JSON object, got {type(record).__name__}")
    return record


def check_data_matches(ds: "Dataset", cfg: LordConfig, what: str, n_imgs_must_match: bool) -> None:
    """Refuse data whose image shape or class count differs from the model's (and, for training,
    data whose size differs from the content table's)."""
    m = ds.meta
    mc = cfg.model
    if (m.img_size, m.channels) != (mc.img_size, mc.channels):
        raise LordkitError(f"data {ds.path.name} has {m.img_size}x{m.img_size}x{m.channels} images but the "
                           f"model expects {mc.img_size}x{mc.img_size}x{mc.channels}")
    if m.n_classes != mc.n_classes:
        raise LordkitError(f"data {ds.path.name} has {m.n_classes} classes but the model was built for {mc.n_classes}")
    if n_imgs_must_match and m.n_imgs != mc.n_imgs:
        raise LordkitError(f"{what} needs the data stage 1 was trained on: {ds.path.name} has {m.n_imgs} "
                           f"images, the model's content table {mc.n_imgs}")


# ----------------------------------------------------------------------------------------------
# Weights.


def save_state(state: dict[str, "Tensor"], path: Path) -> None:
    """A safetensors file written to a temporary name, fsynced and renamed into place."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = temp_file(path)
    try:
        try:
            save_file(state, str(tmp), metadata={"format": "pt"})
        except Exception as e:  # safetensors reports a full disk as text: "I/O error: ... (os error 28)"
            raise _os_error(e, path) from None
        os.chmod(tmp, 0o666 & ~current_umask())  # safetensors creates its file 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _os_error(e: Exception, path: Path) -> Exception:
    """The OSError a writer library described only in its message, else `e` itself."""
    m = re.search(r"os error (\d+)", str(e))
    code = int(m.group(1)) if m else errno_in_message(str(e))
    return OSError(code, os.strerror(code), str(path)) if code else e


class _WriteRecorder:
    """A file for torch.save that keeps the OSError its C++ writer would hide behind 'enforce fail'."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_weights(module: "nn.Module", path: Path) -> None:
    save_state(module.state_dict(), path)


def read_state(path: Path) -> dict[str, "Tensor"]:
    """A safetensors file as a CPU state dict; a missing or damaged file is one clear error."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise LordkitError(f"weights not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise LordkitError(f"{path} is not a readable safetensors file: {e}") from None


def load_weights(module: "nn.Module", path: Path) -> None:
    state = read_state(path)
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise LordkitError(f"{path} does not match the model in {CONFIG}: {len(wrong)} tensors differ in shape "
                           f"(first: {wrong[0]}, file vs config); was {CONFIG} edited after training?")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LordkitError(f"{path} does not match the model in {CONFIG} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


_STAGE_HINTS = {"latent": ("no trained stage 1", "lordkit train"),
                "amortized": ("no trained encoders", "lordkit train-encoders")}


def _load_stage(model_dir: Path, stage: str, cfg: LordConfig | None, device: "str | torch.device"):
    from lordkit.models import AmortizedModel, LatentModel

    cfg = cfg or load_config(model_dir)
    path = stage_weights(model_dir, stage, cfg)
    model = (LatentModel if stage == "latent" else AmortizedModel)(cfg.model)
    load_weights(model, path)
    return model.to(device).eval()


def load_latent(model_dir: Path, cfg: LordConfig | None = None, device: "str | torch.device" = "cpu") -> "LatentModel":
    """The stage-1 model in eval mode on `device`."""
    return _load_stage(Path(model_dir), "latent", cfg, device)


def load_amortized(model_dir: Path, cfg: LordConfig | None = None,
                   device: "str | torch.device" = "cpu") -> "AmortizedModel":
    """The stage-2 model (encoders, modulation, generator) in eval mode on `device`."""
    return _load_stage(Path(model_dir), "amortized", cfg, device)


def load_class_bank(model_dir: Path, cfg: ModelConfig) -> np.ndarray:
    """Stage-1 class codes (n_classes, class_dim) float32, read without loading the content table."""
    from safetensors import safe_open

    path = stage_weights(model_dir, "latent")
    try:
        with safe_open(str(path), framework="numpy") as f:
            if CLASS_TABLE_KEY not in f.keys():
                raise LordkitError(f"{path} has no {CLASS_TABLE_KEY}; it is not a lordkit stage-1 file")
            bank = f.get_tensor(CLASS_TABLE_KEY)
    except LordkitError:
        raise
    except Exception as e:  # safetensors raises its own types for corrupt headers
        raise LordkitError(f"{path} is not a readable safetensors file: {e}") from None
    if bank.shape != (cfg.n_classes, cfg.class_dim):
        raise LordkitError(f"{path}: class table is {bank.shape}, {CONFIG} says ({cfg.n_classes}, {cfg.class_dim})")
    return np.ascontiguousarray(bank, dtype=np.float32)


def write_model(model_dir: Path, cfg: LordConfig, latent: "LatentModel", amortized: "AmortizedModel | None",
                data: dict[str, Any], *, force: bool = False) -> Path:
    """A complete model dir (config, data record, weights of one or both stages), built under a
    temporary name and renamed into place."""
    with staged_dir(Path(model_dir), force=force, what="model") as tmp:
        save_config(tmp, cfg)
        save_data_record(tmp, data)
        save_weights(latent, weights_path(tmp, "latent"))
        if amortized is not None:
            save_weights(amortized, weights_path(tmp, "amortized"))
    return Path(model_dir)


def write_imported_model(model_dir: Path, cfg: LordConfig, latent_state: dict[str, "Tensor"],
                         amortized_state: dict[str, "Tensor"] | None, *, source: str, force: bool = False) -> None:
    """A model dir from weights trained elsewhere (e.g. the reference code), written atomically."""
    from lordkit.models import AmortizedModel, LatentModel

    latent = LatentModel(cfg.model)
    latent.load_state_dict(latent_state)
    amortized = None
    if amortized_state is not None:
        amortized = AmortizedModel(cfg.model)
        amortized.load_state_dict(amortized_state)
    write_model(model_dir, cfg, latent, amortized, bare_data_record(cfg.model, imported_from=source), force=force)


def write_random_model(model_dir: Path, cfg: LordConfig, *, seed: int = 0, class_code_range: float | None = None,
                       data: dict[str, Any] | None = None, force: bool = False) -> Path:
    """A model dir with both stages at their seeded random initialisation (benchmarks, tests, smoke
    runs). class_code_range spreads the class table uniform(-r, r) so classes visibly differ."""
    import torch

    from lordkit.models import LatentModel, amortized_from_latent

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        latent = LatentModel(cfg.model)
        amortized = amortized_from_latent(latent, cfg.model)
        if class_code_range is not None:
            with torch.no_grad():
                latent.class_embedding.weight.uniform_(-class_code_range, class_code_range)
    record = data if data is not None else bare_data_record(cfg.model, source=f"random initialisation, seed {seed}")
    return write_model(model_dir, cfg, latent, amortized, record, force=force)


# ----------------------------------------------------------------------------------------------
# Checkpoints: the files only. What goes into them (gathered shards, optimizer, scheduler) is the
# training loop's business.


def write_checkpoint(model_dir: Path, stage: str, model_state: dict[str, "Tensor"], state: dict[str, Any],
                     progress: dict[str, Any]) -> None:
    """model.safetensors + state.pt (torch.save of tensors and plain values) + progress.json, built
    in a staging dir and swapped in as one unit."""
    import torch

    with staged_dir(checkpoint_dir(model_dir, stage), force=True, what="checkpoint") as tmp:
        save_state(model_state, tmp / _CHECKPOINT_WEIGHTS)
        with open(tmp / _CHECKPOINT_STATE, "wb") as f:
            writer = _WriteRecorder(f)
            try:
                torch.save(state, writer)
                f.flush()
            except RuntimeError:
                if writer.error is None:
                    raise
                e = writer.error
                raise OSError(e.errno, e.strerror, str(tmp / _CHECKPOINT_STATE)) from None
            os.fsync(f.fileno())
        atomic_write_json(tmp / _CHECKPOINT_PROGRESS, progress)


def checkpoint_progress(model_dir: Path, stage: str) -> dict[str, Any] | None:
    """progress.json of a stage's last complete checkpoint (stage, step, epoch, total_steps, settings,
    ...), or None when there is none."""
    if not has_checkpoint(model_dir, stage):
        return None
    try:
        progress = read_json(checkpoint_dir(model_dir, stage) / _CHECKPOINT_PROGRESS, "checkpoint progress")
    except LordkitError:
        return None
    return progress if isinstance(progress, dict) else None


def read_checkpoint(model_dir: Path, stage: str) -> tuple[dict[str, "Tensor"], dict[str, Any]]:
    """(model state, training state) of the last complete checkpoint, on the CPU."""
    import torch

    d = checkpoint_dir(model_dir, stage)
    if not has_checkpoint(model_dir, stage):
        raise LordkitError(f"no {stage} checkpoint in {d} to resume from")
    try:
        model_state = read_state(d / _CHECKPOINT_WEIGHTS)
        state = torch.load(d / _CHECKPOINT_STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file: read_state's LordkitError, or one of torch's several types
        raise LordkitError(f"checkpoint {d} is unreadable: {e}") from None
    return model_state, state


# ----------------------------------------------------------------------------------------------
# A stage finished from its last checkpoint. The checkpoint a stage writes after its last step holds
# the weights the stage then writes, byte for byte (both are `save_state` of the same state), so a
# run killed in between (while it draws its last sample grid or writes its weights) loses nothing:
# whatever needs the weights writes them from that checkpoint. Its metrics lines were all appended
# before it; the last sample grid is drawn again by `--resume` of the stage only (it needs the data).


def stage_settings(cfg: LordConfig, stage: str) -> str:
    """A short hash of what a stage's weights follow from (the model section and the stage's own),
    recorded in every checkpoint: a checkpoint finishes a stage only under the settings it was
    written with."""
    doc = cfg.to_json()
    text = json.dumps({"model": doc["model"], stage: doc[stage]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checkpoint_final(progress: dict[str, Any], cfg: LordConfig, stage: str) -> bool:
    """Whether a checkpoint was written after its stage's last step (older checkpoints do not record
    total_steps: their epoch count says it)."""
    if "total_steps" in progress:
        return int(progress["step"]) >= int(progress["total_steps"])
    return int(progress.get("epoch", -1)) >= getattr(cfg, stage).n_epochs


def _why_unfinished(model_dir: Path, stage: str, cfg: LordConfig) -> str | None:
    """Why a stage's weights cannot be written from its last checkpoint ("" when it has none), or
    None when they can."""
    progress = checkpoint_progress(model_dir, stage)
    if progress is None:
        return ""
    step = progress.get("step")
    where = (f"step {step}/{progress['total_steps']}" if "total_steps" in progress
             else f"epoch {progress.get('epoch')}/{getattr(cfg, stage).n_epochs}")
    command = _resume_command(model_dir, stage)
    if not _checkpoint_final(progress, cfg, stage):
        return f": its training stopped at {where}; continue it with `{command}`"
    if progress.get("settings", stage_settings(cfg, stage)) != stage_settings(cfg, stage):
        return f": its last checkpoint ({where}) was written under other settings than {CONFIG} holds now"
    if progress.get("collapse_stop"):
        return f": its training stopped on a collapse at {where}; `{command}` writes its weights anyway"
    return None


def _resume_command(model_dir: Path, stage: str) -> str:
    data = load_data_record(model_dir).get("data_name") or "DATA"
    command = "lordkit train" if stage == "latent" else "lordkit train-encoders"
    return f"{command} -dn {data} -mn {Path(model_dir).name} --resume"


def stage_weights(model_dir: Path, stage: str, cfg: LordConfig | None = None) -> Path:
    """The path of a stage's weights, for reading. Where a run was killed after the stage's last
    checkpoint but before its weights were in place, they are written first, from that checkpoint
    (exactly the bytes the run would have written); LordkitError saying what to run when there are
    none to read."""
    model_dir = Path(model_dir)
    path = weights_path(model_dir, stage)
    if path.is_file():
        return path
    cfg = cfg or load_config(model_dir)
    why = _why_unfinished(model_dir, stage, cfg)
    if why is None:
        with _holding_lock(model_dir):  # no trainer starts the stage anew while its weights are written
            if not path.is_file() and _why_unfinished(model_dir, stage, cfg) is None:
                with open(checkpoint_dir(model_dir, stage) / _CHECKPOINT_WEIGHTS, "rb") as src, \
                        atomic_open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if path.is_file():
            return path
        why = ""
    what, command = _STAGE_HINTS[stage]
    raise LordkitError(f"{model_dir} has {what} ({path.name}){why or f'; run `{command}` first'}")


# ----------------------------------------------------------------------------------------------
# A training stopped before its first checkpoint leaves nothing behind.

_BEFORE_CHECKPOINT = {CONFIG, DATA_RECORD, METRICS, LOCK, CHECKPOINTS, SAMPLES, TENSORBOARD}


def is_unstarted(model_dir: Path) -> bool:
    """Whether a model dir holds only what a training writes before its first checkpoint (config,
    data record, metrics, TensorBoard events): no weights, no checkpoint and no sample grid of
    either stage, nothing else. A training killed that early leaves one; nothing in it can be
    continued."""
    model_dir = Path(model_dir)
    recover_tree(model_dir)  # what dead writers left in it
    try:
        names = {entry.name for entry in os.scandir(model_dir)}
    except OSError:
        return False
    if not names <= _BEFORE_CHECKPOINT:
        return False
    if any(weights_path(model_dir, s).exists() or has_checkpoint(model_dir, s) for s in STAGES):
        return False
    return not any(samples_dir(model_dir).iterdir()) if samples_dir(model_dir).is_dir() else True


def discard_unstarted(model_dir: Path, *, remove_dir: bool) -> None:
    """Remove what a training that stopped before its first checkpoint wrote into a model dir
    (is_unstarted), and with remove_dir the dir itself: called by that training, still holding the
    lock. A dir that holds anything else is left as it is."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir() or not is_unstarted(model_dir):
        return
    for name in sorted(_BEFORE_CHECKPOINT - {LOCK}) + ([LOCK] if remove_dir else []):
        path = model_dir / name
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    if remove_dir:
        with contextlib.suppress(OSError):  # not empty: someone else's file appeared meanwhile
            model_dir.rmdir()


# ----------------------------------------------------------------------------------------------
# The lock held while training.

_HELD: set[Path] = set()  # model dirs whose training lock this process holds


@contextlib.contextmanager
def _holding_lock(model_dir: Path) -> Iterator[None]:
    """The training lock of a model dir, unless this process holds it already."""
    if Path(model_dir).resolve() in _HELD:
        yield
        return
    with training_lock(model_dir):
        yield


@contextlib.contextmanager
def training_lock(model_dir: Path) -> Iterator[None]:
    """Refuse a second training into the same model dir while one runs (advisory file lock)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    f = open(lock_path(model_dir), "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise LordkitError(f"{model_dir} is being trained by {holder}; wait for it or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        held = model_dir.resolve()
        _HELD.add(held)
        try:
            yield
        finally:  # only the holder clears the pid: a refused second trainer leaves it alone
            _HELD.discard(held)
            with contextlib.suppress(OSError):
                f.truncate(0)
    finally:
        f.close()


def record_class_names(model_dir: Path, record: dict[str, Any], n_classes: int) -> list[str]:
    """The class names a model's data record (`load_data_record`) gives its `n_classes` classes, as
    strings, numbered where it names none; LordkitError naming data.json where they are not a list or
    not one per class."""
    path = Path(model_dir) / DATA_RECORD
    names = record.get("class_names")
    if names is not None and not isinstance(names, list):
        raise LordkitError(f"{path}: class_names must be a list, got {type(names).__name__}")
    class_names = [str(n) for n in (names or range(n_classes))]
    if len(class_names) != n_classes:
        raise LordkitError(f"{path} names {len(class_names)} classes, the model has {n_classes}")
    return class_names
