"""`lordkit export`: a trained model's networks as ONNX, TorchScript, AOTInductor and ExecuTorch files, verified,
in an export dir."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lordkit.fsutil import export_dir, model_dir, recover_tree

from .common import get_base, handle_errors, say


@handle_errors
def export(
    ctx: typer.Context,
    model_name: Annotated[str, typer.Option("--model-name", "-mn", help="Model with trained encoders (`lordkit train-encoders`).")],
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Write ONNX files (plain and onnxruntime-optimised).")] = True,
    torchscript: Annotated[bool, typer.Option("--torchscript/--no-torchscript", help="Write frozen TorchScript .pt files.")] = True,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write half-precision ONNX files with float32 inputs and outputs.")] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version (18 to 20; 13 to 20 with --onnx-exporter legacy).")] = 18,
    onnx_exporter: Annotated[str, typer.Option("--onnx-exporter", help="torch.onnx exporter: torch.export, or legacy (TorchScript-based).")] = "torch.export",
    aoti: Annotated[bool, typer.Option("--aoti", help="Also write AOTInductor packages (<network>.pt2: compiled code for libtorch; needs g++).")] = False,
    aoti_device: Annotated[Optional[str], typer.Option("--aoti-device", help="Device the .pt2 packages are compiled for: cpu or cuda (default: cuda when torch sees a GPU).")] = None,
    executorch: Annotated[bool, typer.Option("--executorch", help="Also write ExecuTorch programs (<network>.pte, XNNPACK; pip install 'lordkit[executorch]').")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Export dir (default: <base-dir>/exports/<model name>).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also write int8 ONNX files (onnxruntime static quantization calibrated on training images); with --executorch also int8 .pte programs.")] = False,
    calibration_data: Annotated[Optional[str], typer.Option("--calibration-data", help="Dataset for --int8 calibration (default: the model's training data).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export dir.")] = False,
    web: Annotated[bool, typer.Option("--web", help="Also write web/, a page that runs the export in a browser (onnxruntime-web); on an existing export without --force, adds only web/.")] = False,
    web_runtime: Annotated[Optional[Path], typer.Option("--web-runtime", help="Folder with the onnxruntime-web files for --web (default: npm ci into ~/.cache/lordkit).")] = None,
) -> None:
    """Export content/class encoders, generator and transfer; check each file against PyTorch."""
    from lordkit.console import out_console
    from lordkit.errors import LordkitError
    from lordkit.export.exporter import (check_aoti_device, check_onnx_exporter, check_opset, check_out_dir, export_model,
                                         parity_table)

    base = get_base(ctx)
    src = model_dir(base, model_name)
    dst = out.expanduser() if out is not None else export_dir(base, model_name)
    if int8 and not onnx:
        raise LordkitError("--int8 quantizes the ONNX files; it needs --onnx")
    check_onnx_exporter(onnx_exporter)
    if aoti:
        check_aoti_device(aoti_device)
    if onnx:
        check_opset(opset, onnx_exporter)  # before loading anything: a bad opset is a typo, not a late export failure
    recover_tree(dst, depth=1)  # what a killed export to this dir left beside it (also outside the base dir)
    if web_runtime is not None and not web:
        raise LordkitError("--web-runtime gives the files for --web; add --web")
    if web and not onnx:
        raise LordkitError("--web runs the ONNX files in the browser; it needs --onnx")
    if web:
        from lordkit.export.web import add_web, runtime_dir

        web_files = runtime_dir(web_runtime)  # before the slow export: missing files fail fast
        if not force and (dst / "manifest.json").is_file():  # an existing export gets web/ and nothing else
            if int8 or fp16:
                raise LordkitError(f"export {dst} exists: --web alone adds web/ to it; other formats need --force")
            add_web(dst, runtime=web_files)
            say(f"added web/ to export {dst} (model files kept); serve {dst} over HTTP and open web/")
            return
    check_out_dir(dst, force)
    finish = None
    if int8:
        from lordkit.export.quantize import quantize_executorch, quantize_export
        from lordkit.modeldir import load_config

        load_config(src)  # a missing model is named before its calibration data
        calibration, calibration_name = _calibration(base, src, calibration_data)

        def finish(staged: Path) -> dict:  # int8 files join the export before it takes its name
            manifest = quantize_export(staged, calibration, calibration_source=calibration_name, shown_dir=dst)
            if executorch:
                manifest = quantize_executorch(staged, calibration, src, calibration_source=calibration_name,
                                               shown_dir=dst)
            return manifest

    manifest = export_model(src, dst, onnx=onnx, torchscript=torchscript, fp16=fp16, opset=opset, force=force,
                            show=False, progress=True, finish=finish, onnx_exporter=onnx_exporter,
                            aoti=aoti, aoti_device=aoti_device, executorch=executorch)
    out_console.print(parity_table(manifest["parity"]))
    n_files = len(manifest["sha256"]) + 1
    web_note = ""
    if web:
        add_web(dst, runtime=web_files)
        web_note = "; web/: serve the export dir over HTTP and open web/"
    say(f"exported {model_name}: {n_files} files in {dst} (manifest: {dst / 'manifest.json'}){web_note}")


def _calibration(base: Path, src: Path, name: Optional[str]):
    """The dataset --int8 calibrates on, opened before the (slow) export so a typo fails fast."""
    from lordkit.data.store import Dataset
    from lordkit.errors import LordkitError
    from lordkit.fsutil import data_dir
    from lordkit.modeldir import load_data_record

    name = name or load_data_record(src).get("data_name")
    if not name or not isinstance(name, str):
        raise LordkitError("--int8 needs images to calibrate on: pass --calibration-data NAME")
    try:
        return Dataset(data_dir(base, name)), name
    except LordkitError as e:
        raise LordkitError(f"--int8 calibration data: {e}; pass --calibration-data NAME") from None


def register(app: typer.Typer) -> None:
    app.command("export")(export)
