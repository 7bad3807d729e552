"""`lordkit serve`: an HTTP service for an export, with dynamic batching, without torch."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Optional

import typer

from lordkit.errors import LordkitError

from .common import get_base, handle_errors, say


def _number(text: str, flag: str, kind: type = int):
    """A number option parsed here, so that a bad value is one error line (click draws a usage box)."""
    try:
        return kind(text.strip())
    except ValueError:
        raise LordkitError(f"{flag} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


@handle_errors
def serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Export dir, or a name under <base-dir>/exports/.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[str, typer.Option("--port", metavar="N", help="TCP port.")] = "8000",
    max_batch: Annotated[str, typer.Option("--max-batch", metavar="N", help="Rows per onnxruntime call at most, per network.")] = "32",
    max_wait_ms: Annotated[str, typer.Option("--max-wait-ms", metavar="MS", help="How long a queued row waits for others to share its call.")] = "5",
    workers: Annotated[str, typer.Option("--workers", metavar="N", help="Worker processes, each with its own model.")] = "1",
    backend: Annotated[str, typer.Option("--backend", help="Engine: onnxruntime, openvino (same ONNX files, CPU) or torch (the export's .pt2 packages, export --aoti).")] = "onnxruntime",
    provider: Annotated[str, typer.Option("--provider", help="auto (CUDA when onnxruntime has it), cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[Optional[str], typer.Option("--threads", metavar="N", help="onnxruntime intra-op threads per process (default: cores / workers).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 or int8 ONNX files (export --fp16 / --int8 writes them); openvino: fp32, bf16 or int8.")] = "fp32",
    queue: Annotated[str, typer.Option("--queue", metavar="N", help="Requests in flight at most; more get 503 with Retry-After.")] = "128",
    timeout_s: Annotated[str, typer.Option("--timeout-s", metavar="S", help="Per request, from arrival to response; then 504.")] = "30",
    max_body_mb: Annotated[str, typer.Option("--max-body-mb", metavar="M", help="Largest request body; above it 413.")] = "16",
    max_image_mp: Annotated[str, typer.Option("--max-image-mp", metavar="MP", help="Largest image in megapixels (at most 100); above it 413.")] = "100",
    max_pairs: Annotated[str, typer.Option("--max-pairs", metavar="N", help="(content, class) pairs per transfer request at most; above it 413.")] = "256",
    max_connections: Annotated[str, typer.Option("--max-connections", metavar="N", help="Open connections per process at most; a request on one past it gets 503.")] = "512",
    header_timeout_s: Annotated[str, typer.Option("--header-timeout-s", metavar="S", help="A request line and headers must arrive within this; then 408 and the connection closes.")] = "10",
    prep_threads: Annotated[Optional[str], typer.Option("--prep-threads", metavar="N", help="Threads decoding, aligning and encoding images (default: one per core).")] = None,
    landmarks: Annotated[str, typer.Option("--landmarks", help="Face models: 68, 5, or the path of a dlib shape predictor .dat file.")] = "68",
    detector: Annotated[str, typer.Option("--detector", help="Face models: hog (fast) or cnn (dlib's MMOD, slow on CPU).")] = "hog",
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log one line per request.")] = True,
) -> None:
    """Serve an export over HTTP: transfer, encoders, classes, health, metrics (docs/serve.md)."""
    from lordkit.serve.server import check_installed
    from lordkit.serve.server import serve as run_server
    from lordkit.serve.settings import Settings

    check_installed()  # before anything else: without the extra nothing below can work
    settings = Settings(
        export=model, host=host, port=_number(port, "--port"), max_batch=_number(max_batch, "--max-batch"),
        max_wait_ms=_number(max_wait_ms, "--max-wait-ms", float), workers=_number(workers, "--workers"),
        backend=backend, provider=provider, threads=_number(threads, "--threads") if threads is not None else None,
        precision=precision, queue=_number(queue, "--queue"), timeout_s=_number(timeout_s, "--timeout-s", float),
        max_body_mb=_number(max_body_mb, "--max-body-mb", float),
        max_image_mp=_number(max_image_mp, "--max-image-mp", float), max_pairs=_number(max_pairs, "--max-pairs"),
        max_connections=_number(max_connections, "--max-connections"),
        header_timeout_s=_number(header_timeout_s, "--header-timeout-s", float),
        prep_threads=_number(prep_threads, "--prep-threads") if prep_threads is not None else None,
        landmarks=landmarks, detector=detector, access_log=access_log,
    ).check()
    # Names are checked before the export is resolved and hashed, the port before the model loads.
    from lordkit.runtime import Preparer, resolve_export, select_device
    from lordkit.runtime.backends import check_precision

    select_device(settings.provider, None)
    check_precision(settings.backend, settings.precision)
    Preparer(8, 3, landmarks=settings.landmarks, detector=settings.detector)
    export = resolve_export(model, get_base(ctx))
    if not export.is_dir():
        raise LordkitError(f"export not found: {model} (neither a directory nor a name under "
                           f"{get_base(ctx) / 'exports'})")
    run_server(replace(settings, export=str(export)), say=say)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
