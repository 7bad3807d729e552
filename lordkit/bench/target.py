"""What to benchmark: a given export (and the model dir it came from, for the eager rows), or a random
model of the reference size (or lordkit.config's tiny size, for smoke runs) built and exported in a
temporary or work dir."""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from lordkit.errors import LordkitError

from .machine import has_module

if TYPE_CHECKING:
    from lordkit.config import ModelConfig

REFERENCE_NAME = "reference-random"  # the model benchmarked when no export is given
N_CALIBRATION_IMGS = 80  # smooth random images calibrating the random model's int8 files (64 + 16 held out)


def reference_config(img_size: int = 64, channels: int = 3, *, tiny: bool = False) -> ModelConfig:
    """The random model's architecture: LordConfig's model defaults (content 128, class 256, 4 AdaIN
    layers of 256) at this size, with more AdaIN layers above 128 px, where the generator would
    otherwise start above 8 px; tiny: lordkit.config.tiny_model (smoke runs). ConfigError on bad values."""
    from lordkit.config import ModelConfig, tiny_model

    if tiny:
        return tiny_model(img_size, channels, n_imgs=1, n_classes=1)
    n_adain = max(ModelConfig.n_adain_layers, ModelConfig.min_adain_layers(img_size))
    return ModelConfig(img_size=img_size, channels=channels, n_imgs=1, n_classes=1, n_adain_layers=n_adain)


def check_random_target(img_size: int = 64, channels: int = 3, *, tiny: bool = False) -> ModelConfig:
    """The random model's config, or a LordkitError (bad size, no torch) before anything slow starts."""
    cfg = reference_config(img_size, channels, tiny=tiny)
    if not has_module("torch"):
        raise LordkitError("without --model a random model is built and exported, which needs torch; "
                           "pass --model EXPORT to benchmark an export on this machine")
    return cfg


def reference_export(work_dir: Path, cfg: ModelConfig, *, onnx: bool = True, fp16: bool = True, int8: bool = True,
                     progress: bool = True, seed: int = 0,
                     log: Callable[[str], None] = lambda message: None) -> tuple[Path, Path, dict[str, Any]]:
    """A seeded random model of architecture `cfg` in work_dir/model, exported (export_model) to
    work_dir/export, with int8 files calibrated on smooth random images; returns (model dir, export
    dir, what was done)."""
    from lordkit.config import LordConfig
    from lordkit.export.exporter import export_model
    from lordkit.modeldir import load_config, write_random_model

    reference = cfg == reference_config(cfg.img_size, cfg.channels)
    t0 = time.perf_counter()
    model_dir = write_random_model(work_dir / "model", LordConfig(model=cfg), seed=seed, force=True)
    export_dir = work_dir / "export"
    log(f"exporting a random {cfg.img_size} px model of " + ("the reference size (a minute or two on a small CPU)"
                                                             if reference else "the tiny size"))
    export_model(model_dir, export_dir, onnx=onnx, fp16=fp16 and onnx, batch_sizes=(2,), show=False, progress=progress)
    sizes = "LordConfig defaults" if reference else "lordkit.config.TINY_MODEL"
    info: dict[str, Any] = {"source": f"random initialisation ({sizes}), exported by lordkit.bench",
                            "export_s": time.perf_counter() - t0}
    if int8 and onnx:
        from lordkit.export.quantize import quantize_export, smooth_noise_images

        t0 = time.perf_counter()
        log("quantizing to int8 (calibrated on smooth random images)")
        quantize_export(export_dir, smooth_noise_images(N_CALIBRATION_IMGS, cfg.img_size, cfg.channels),
                        calibration_source="smooth random images (benchmark)")
        info["quantize_s"] = time.perf_counter() - t0
    info["config"] = load_config(model_dir).to_json()["model"]
    return model_dir, export_dir, info


def _model_dir_of(model_dir: str, base: Path | None) -> Path:
    """--model-dir: a directory, or a name under <base>/models/."""
    from lordkit.fsutil import model_dir as named_model_dir

    md = Path(model_dir).expanduser()
    if not md.is_dir() and base is not None and "/" not in model_dir:
        md = named_model_dir(base, model_dir)
    if not md.is_dir():
        raise LordkitError(f"model not found: {model_dir} (neither a directory nor a name under "
                           f"{base / 'models' if base else 'models/'})")
    return md


@contextlib.contextmanager
def benchmark_target(model: str | None, model_dir: str | None, base: Path | None, img_size: int | None,
                     channels: int | None, *, tiny: bool = False, int8: bool = True, fp16: bool = True,
                     onnx: bool = True, progress: bool = True, work_dir: Path | None = None,
                     log: Callable[[str], None] = lambda message: None,
                     ) -> Iterator[tuple[Path, Path | None, dict[str, Any]]]:
    """(export dir, model dir or None, model info) to benchmark.

    model: an export dir or a name under <base>/exports/; model_dir: the model dir it came from
    (default: the base dir's model of the export's name, when there is one). Without model, the
    random model (reference_config) is built in a temp dir, removed afterwards, or in work_dir,
    kept and reused when work_dir already holds one. Every argument is checked before anything slow.
    """
    from lordkit.export_format import MANIFEST
    from lordkit.fsutil import model_dir as named_model_dir
    from lordkit.modeldir import is_model_dir
    from lordkit.runtime.bundle import Bundle, resolve_export

    if model is None:
        if model_dir is not None:
            raise LordkitError("--model-dir goes with --model (an export); without --model a random model is built")
        cfg = check_random_target(img_size or 64, channels or 3, tiny=tiny)
        if work_dir is not None and (work_dir / "export" / MANIFEST).is_file():
            log(f"reusing the random model in {work_dir}")
            info = {"source": f"random initialisation, reused from {work_dir}"}
            yield work_dir / "export", work_dir / "model", {"model_name": REFERENCE_NAME, **info}
            return
        with (contextlib.nullcontext(str(work_dir)) if work_dir is not None
              else tempfile.TemporaryDirectory(prefix="lordkit-bench-")) as tmp:
            random_md, random_ex, done = reference_export(Path(tmp), cfg, onnx=onnx, fp16=fp16, int8=int8,
                                                          progress=progress, log=log)
            yield random_ex, random_md, {"model_name": REFERENCE_NAME, **done}
        return
    if tiny:
        raise LordkitError("--tiny applies to the random model; an export's sizes are fixed")
    export_dir = resolve_export(model, base)
    manifest = Bundle(export_dir, verify="none").manifest  # a missing or foreign export fails here, before any work
    for flag, value, key in (("--img-size", img_size, "img_size"), ("--channels", channels, "channels")):
        if value is not None and value != manifest[key]:
            raise LordkitError(f"{flag} {value} does not apply: export {export_dir.name} is fixed at {key} {manifest[key]}")
    md: Path | None = None
    info: dict[str, Any] = {"source": "export"}
    if model_dir is not None:
        md = _model_dir_of(model_dir, base)
    elif base is not None and manifest.get("model_name"):
        with contextlib.suppress(LordkitError):
            candidate = named_model_dir(base, str(manifest["model_name"]))
            if is_model_dir(candidate):
                md = candidate
                info["model_dir_found"] = "by the export's model name (checked against the export)"
    yield export_dir, md, info
