"""`lordkit bench`: latency and throughput of a model's exported networks on every backend, as a table, JSON and PNG."""

from __future__ import annotations

import contextlib
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from lordkit.errors import LordkitError

from .common import get_base, handle_errors, say

REFERENCE_NAME = "reference-random"  # the model benchmarked when no --model is given
N_CALIBRATION_IMGS = 80  # smooth random images calibrating the random model's int8 files (64 + 16 held out)


# A model small enough for smoke runs of the benchmark scripts on a CPU (same code paths, tiny sizes).
TINY_MODEL = dict(content_dim=8, class_dim=8, adain_dim=16, gen_last_dim=8, enc_conv_dims=(8, 16, 16), enc_fc_dim=32)


def reference_config(img_size: int = 64, channels: int = 3, **overrides: Any):
    """LordConfig's model defaults (content 128, class 256, 4 AdaIN layers of 256) at this size; more AdaIN
    layers above 128 px, where the generator would otherwise start above 8 px. ConfigError on bad values."""
    from lordkit.config import ModelConfig

    n_adain = max(ModelConfig.n_adain_layers, ModelConfig.min_adain_layers(img_size))
    return ModelConfig(**{"img_size": img_size, "channels": channels, "n_imgs": 1, "n_classes": 1,
                          "n_adain_layers": n_adain, **overrides})


def reference_model_dir(path: Path, img_size: int = 64, channels: int = 3, seed: int = 0, **overrides: Any) -> Path:
    """A model dir holding a freshly initialised model of the reference default size with random weights, seeded."""
    from lordkit.config import LordConfig
    from lordkit.modeldir import write_random_model

    return write_random_model(path, LordConfig(model=reference_config(img_size, channels, **overrides)), seed=seed,
                              force=True)


def reference_export(work_dir: Path, img_size: int = 64, channels: int = 3, *, onnx: bool = True, fp16: bool = True,
                     int8: bool = True, progress: bool = True, model_overrides: dict[str, Any] | None = None,
                     log: Callable[[str], None] = lambda message: None) -> tuple[Path, Path, dict[str, Any]]:
    """The random reference model in work_dir/model, exported (export_model) to work_dir/export, with int8
    files calibrated on smooth random images; returns (model dir, export dir, what was done).
    model_overrides: ModelConfig fields to change (e.g. TINY_MODEL for smoke runs)."""
    from lordkit.export.exporter import export_model

    t0 = time.perf_counter()
    model_dir = reference_model_dir(work_dir / "model", img_size, channels, **(model_overrides or {}))
    export_dir = work_dir / "export"
    log(f"exporting a random {img_size} px model of the reference size (a minute or two on a small CPU)")
    export_model(model_dir, export_dir, onnx=onnx, fp16=fp16 and onnx, batch_sizes=(2,), show=False, progress=progress)
    info: dict[str, Any] = {"source": "random initialisation (LordConfig defaults), exported by lordkit.bench",
                            "export_s": time.perf_counter() - t0}
    if int8 and onnx:
        from lordkit.export.quantize import quantize_export, smooth_noise_images

        t0 = time.perf_counter()
        log("quantizing to int8 (calibrated on smooth random images)")
        quantize_export(export_dir, smooth_noise_images(N_CALIBRATION_IMGS, img_size, channels),
                        calibration_source="smooth random images (benchmark)")
        info["quantize_s"] = time.perf_counter() - t0
    from lordkit.config import LordConfig

    info["config"] = LordConfig.load(model_dir / "config.json").to_json()["model"]
    return model_dir, export_dir, info


@contextlib.contextmanager
def benchmark_target(model: str | None, model_dir: str | None, base: Path | None, img_size: int | None,
                     channels: int | None, *, int8: bool = True, fp16: bool = True, onnx: bool = True,
                     progress: bool = True, work_dir: Path | None = None, model_overrides: dict[str, Any] | None = None,
                     log: Callable[[str], None] = lambda message: None,
                     ) -> Iterator[tuple[Path, Path | None, dict[str, Any]]]:
    """(export dir, model dir or None, model info) to benchmark: --model (+ --model-dir, else the base
    dir's model of the export's name when there is one), or the random reference model, built in a
    temp dir (or in work_dir, kept, and reused when work_dir already holds one)."""
    from lordkit.fsutil import model_dir as named_model_dir
    from lordkit.fsutil import read_json
    from lordkit.runtime.bundle import Bundle, resolve_export

    if model is None:
        if model_dir is not None:
            raise LordkitError("--model-dir goes with --model (an export); without --model a random model is built")
        size, chans = img_size or 64, channels or 3
        if work_dir is not None and (work_dir / "export" / "manifest.json").is_file():
            log(f"reusing the random model in {work_dir}")
            info = {"source": f"random initialisation, reused from {work_dir}"}
            yield work_dir / "export", work_dir / "model", {"model_name": REFERENCE_NAME, **info}
            return
        with (contextlib.nullcontext(str(work_dir)) if work_dir is not None
              else tempfile.TemporaryDirectory(prefix="lordkit-bench-")) as tmp:
            random_md, random_ex, done = reference_export(Path(tmp), size, chans, onnx=onnx, fp16=fp16, int8=int8,
                                                          progress=progress, model_overrides=model_overrides, log=log)
            yield random_ex, random_md, {"model_name": REFERENCE_NAME, **done}
        return
    export_dir = resolve_export(model, base)
    Bundle(export_dir, verify="none")  # a missing or foreign export fails here, before any work
    manifest = read_json(export_dir / "manifest.json", "export manifest")
    for flag, value, key in (("--img-size", img_size, "img_size"), ("--channels", channels, "channels")):
        if value is not None and value != manifest[key]:
            raise LordkitError(f"{flag} {value} does not apply: export {export_dir.name} is fixed at {key} {manifest[key]}")
    md: Path | None = None
    info: dict[str, Any] = {"source": "export"}
    if model_dir is not None:
        md = Path(model_dir).expanduser()
        if not md.is_dir() and base is not None and "/" not in model_dir:
            md = named_model_dir(base, model_dir)
        if not md.is_dir():
            raise LordkitError(f"model not found: {model_dir} (neither a directory nor a name under {base / 'models' if base else 'models/'})")
    elif base is not None and manifest.get("model_name"):
        with contextlib.suppress(LordkitError):
            candidate = named_model_dir(base, str(manifest["model_name"]))
            if (candidate / "config.json").is_file():
                md = candidate
                info["model_dir_found"] = "by the export's model name (checked against the export)"
    yield export_dir, md, info


@handle_errors
def bench(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Export dir, or a name under <base-dir>/exports/ (default: a random model of the reference size, exported to a temp dir).")] = None,
    model_dir: Annotated[Optional[str], typer.Option("--model-dir", help="Model dir the export came from, for the eager and compile rows (default: <base-dir>/models/<its name> when it matches).")] = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", help="Image size of the random model (default 64).")] = None,
    channels: Annotated[Optional[int], typer.Option("--channels", help="Channels of the random model (default 3).")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8,32,128",
    backends: Annotated[Optional[str], typer.Option("--backends", help="Comma-separated: eager, torchscript, compile, torch-fp16, torch-bf16, ort-cpu, ort-cpu-opt, ort-cuda, ort-cuda-fp16, fp16, int8 (default: eager,torchscript,ort-cpu,ort-cpu-opt,ort-cuda,fp16,int8,compile; + half-precision torch on CUDA).")] = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated networks.")] = "content_encoder,class_encoder,generator,transfer",
    threads: Annotated[Optional[int], typer.Option("--threads", help="Intra-op threads of every engine (default: physical cores).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")] = 3,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per row (fewer if --max-time runs out, at least 3).")] = 20,
    max_time: Annotated[float, typer.Option("--max-time", help="Seconds of timing per row; rows predicted slower per call are skipped.")] = 20.0,
    device: Annotated[str, typer.Option("--device", help="Device of the torch rows: auto, cpu, cuda or cuda:N.")] = "auto",
    align: Annotated[bool, typer.Option("--align/--no-align", help="Also time face alignment (detect, landmarks, warp).")] = True,
    align_image: Annotated[Optional[Path], typer.Option("--align-image", help="Photo to align (default: scikit-image's astronaut.png).")] = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Random model: also quantize it to int8.")] = True,
    matmul_size: Annotated[Optional[int], typer.Option("--matmul-size", help="Side of the square matmul that measures the fp32 rate (default: the best of 1024 and 2048 on CPU, 8192 on CUDA).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for bench-<model>-<time>.json and .png (default: <base-dir>/bench).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result JSON instead of the table.")] = False,
) -> None:
    """Time every exported network on every backend: latency p50/p90/p99, images/s, GFLOP/s against the matmul rate."""
    import json

    from lordkit import bench as lb
    from lordkit.console import console, out_console

    # Every argument is checked before anything slow starts.
    sizes = lb.parse_batch_sizes(batch_sizes)
    networks = lb.parse_list(models, lb.NETWORKS, "network")
    chosen = lb.parse_list(backends, list(lb.BACKENDS), "backend") if backends is not None else None
    torch_device = lb.resolve_torch_device(device)
    if threads is not None and threads < 1:
        raise LordkitError(f"--threads must be >= 1, got {threads}")
    if warmup < 0 or iters < 1 or max_time <= 0:
        raise LordkitError(f"need --warmup >= 0, --iters >= 1 and --max-time > 0; got {warmup}, {iters}, {max_time:g}")
    if matmul_size is not None and matmul_size < 16:
        raise LordkitError(f"--matmul-size must be >= 16, got {matmul_size}")
    if align_image is not None and not align_image.is_file():
        raise LordkitError(f"image not found: {align_image}")
    base = get_base(ctx)
    out_dir = out.expanduser() if out is not None else base / "bench"
    if model is None:
        import importlib.util

        reference_config(img_size or 64, channels or 3)  # a bad --img-size / --channels is named here

        if importlib.util.find_spec("torch") is None:
            raise LordkitError("without --model a random model is built and exported, which needs torch; "
                               "pass --model EXPORT to benchmark an export on this machine")

    def log(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    wanted = chosen if chosen is not None else lb.default_backends(torch_device)
    with benchmark_target(model, model_dir, base, img_size, channels, int8=int8 and "int8" in wanted,
                          fp16="fp16" in wanted or "ort-cuda-fp16" in wanted, log=log) as (export_dir, md, info):
        result = lb.run_benchmark(export_dir, md, batch_sizes=sizes, backends=chosen, networks=networks,
                                  threads=threads, warmup=warmup, iters=iters, max_time_s=max_time, device=torch_device,
                                  align=align, align_image=align_image, model_info=info, matmul_n=matmul_size,
                                  progress=True, log=log)
    name = result["model"].get("model_name") or "model"
    stem = f"bench-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    json_path, png_path = lb.write_results(result, out_dir, stem)
    if as_json:
        say(json.dumps(result, indent=2, default=str))
        return
    table_console = out_console
    if not out_console.is_terminal:  # piped or captured: rich would squeeze the table into 80 columns
        from rich.console import Console

        table_console = Console(width=160)
    table_console.print(lb.results_table(result))
    for line in lb.targets_lines(result):
        say(line)
    warning = lb.load_warning(result)
    if warning:
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True, style="yellow")
    say(f"results: {json_path}\nplot: {png_path}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
