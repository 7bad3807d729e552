"""`lordkit bench`: latency and throughput of a model's exported networks on every backend, as a table, JSON and PNG."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from lordkit.errors import LordkitError

from .common import get_base, handle_errors, say


@handle_errors
def bench(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Export dir, or a name under <base-dir>/exports/ (default: a random model of the reference size, exported to a temp dir).")] = None,
    model_dir: Annotated[Optional[str], typer.Option("--model-dir", help="Model dir the export came from, for the eager and compile rows (default: <base-dir>/models/<its name> when it matches).")] = None,
    img_size: Annotated[Optional[str], typer.Option("--img-size", metavar="N", help="Image size of the random model (default 64).")] = None,
    channels: Annotated[Optional[str], typer.Option("--channels", metavar="N", help="Channels of the random model (default 3).")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8,32,128",
    backends: Annotated[Optional[str], typer.Option("--backends", help="Comma-separated: eager, torchscript, aoti, compile, torch-fp16, torch-bf16, ort-cpu, ort-cpu-opt, ort-cuda, ort-cuda-fp16, fp16, int8, ov-cpu, ov-bf16, ov-int8 (OpenVINO: the openvino extra) (default: eager,torchscript,aoti,ort-cpu,ort-cpu-opt,ort-cuda,fp16,int8,compile; + half-precision torch on CUDA).")] = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated networks.")] = "content_encoder,class_encoder,generator,transfer",
    threads: Annotated[Optional[str], typer.Option("--threads", metavar="N", help="Intra-op threads of every engine (default: physical cores).")] = None,
    warmup: Annotated[str, typer.Option("--warmup", metavar="N", help="Untimed calls before timing.")] = "3",
    iters: Annotated[str, typer.Option("--iters", metavar="N", help="Timed calls per row (fewer if --max-time runs out, at least 3).")] = "20",
    max_time: Annotated[str, typer.Option("--max-time", metavar="SECONDS", help="Seconds of timing per row; rows predicted slower per call are skipped.")] = 20.0,
    device: Annotated[str, typer.Option("--device", help="Device of the torch rows: auto, cpu, cuda or cuda:N.")] = "auto",
    align: Annotated[bool, typer.Option("--align/--no-align", help="Also time face alignment (detect, landmarks, warp).")] = True,
    align_image: Annotated[Optional[Path], typer.Option("--align-image", help="Photo to align (default: scikit-image's astronaut.png).")] = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Random model: also quantize it to int8.")] = True,
    matmul_size: Annotated[Optional[str], typer.Option("--matmul-size", metavar="N", help="Side of the square matmul that measures the fp32 rate (default: the best of 1024 and 2048 on CPU, 8192 on CUDA).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for bench-<model>-<time>.json and .png (default: <base-dir>/bench).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result JSON instead of the table.")] = False,
) -> None:
    """Time every exported network on every backend: latency p50/p90/p99, images/s, GFLOP/s against the matmul rate."""
    import json

    from lordkit import bench as lb
    from lordkit.bench.options import parse_number
    from lordkit.console import console, out_console

    # Every argument is checked before anything slow starts (benchmark_target checks the model's).
    # Numbers are parsed here: click's own refusal is a multi-line usage box.
    img_size, channels, threads, matmul_size = (parse_number(v, flag) if v is not None else None for v, flag in (
        (img_size, "--img-size"), (channels, "--channels"), (threads, "--threads"), (matmul_size, "--matmul-size")))
    warmup, iters = parse_number(warmup, "--warmup"), parse_number(iters, "--iters")
    max_time = parse_number(max_time, "--max-time", float)
    sizes = lb.parse_batch_sizes(batch_sizes)
    networks = lb.parse_list(models, lb.NETWORKS, "network")
    chosen = lb.parse_list(backends, list(lb.BACKENDS), "backend") if backends is not None else None
    torch_device = lb.resolve_torch_device(device)
    lb.check_settings(threads, warmup, iters, max_time, matmul_size)
    if align_image is not None and not align_image.is_file():
        raise LordkitError(f"image not found: {align_image}" if not align_image.exists()
                           else f"{align_image} is not an image file")
    base = get_base(ctx)
    out_dir = out.expanduser() if out is not None else base / "bench"

    def log(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    wanted = chosen if chosen is not None else lb.default_backends(torch_device)
    with lb.benchmark_target(model, model_dir, base, img_size, channels, int8=int8 and ("int8" in wanted or "ov-int8" in wanted),
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
    warning = lb.load_warning(result)
    if warning:
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True, style="yellow")
    say(f"results: {json_path}\nplot: {png_path or lb.PLOT_HINT}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
