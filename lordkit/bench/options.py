"""What a benchmark can be asked for (backends, networks, batch sizes, the torch device) and the
parsing of a user's text into checked values: a bad name is one LordkitError line naming it."""

from __future__ import annotations

import math
from typing import Sequence

from lordkit.errors import LordkitError

from .machine import has_module

# name -> (what it runs, precision, engine); the order is the table's order.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "reference": ("the public reference code's formulation (nn.Upsample, AdaIN through F.batch_norm on a "
                  "(1, B*C, H, W) view) with the model dir's weights, eager fp32 NCHW: the x ref baseline", "fp32",
                  "torch"),
    "eager": ("PyTorch nn.Module from the model dir, fp32 (the x eager baseline)", "fp32", "torch"),
    "torchscript": ("the export's frozen TorchScript .pt, fp32", "fp32", "torch"),
    "aoti": ("the export's AOTInductor .pt2 package (compiled ahead of time; export --aoti), fp32", "fp32", "torch"),
    "compile": ("torch.compile of the eager module, one compile per shape (not timed)", "fp32", "torch"),
    "torch-fp16": ("the eager module cast to float16 (.half())", "fp16", "torch"),
    "torch-bf16": ("the eager module cast to bfloat16", "bf16", "torch"),
    "ort-cpu": ("onnxruntime CPU, plain .onnx", "fp32", "ort"),
    "ort-cpu-opt": ("onnxruntime CPU, .opt.onnx (what lordkit.runtime runs)", "fp32", "ort"),
    "ort-cuda": ("onnxruntime CUDA, .onnx, IO binding with device-resident inputs", "fp32", "ort"),
    "ort-cuda-fp16": ("onnxruntime CUDA, .fp16.onnx, IO binding", "fp16", "ort"),
    "fp16": ("onnxruntime CPU, .fp16.onnx", "fp16", "ort"),
    "int8": ("onnxruntime CPU, .int8.onnx (export.quantize)", "int8", "ort"),
    # The openvino extra: the same ONNX files on OpenVINO's CPU plugin (lordkit.runtime.openvino).
    "ov-cpu": ("OpenVINO CPU, plain .onnx, f32 inference hint (--backend openvino)", "fp32", "openvino"),
    "ov-bf16": ("OpenVINO CPU, plain .onnx computed in bf16 (CPUs with AVX-512 BF16 / AMX)", "bf16", "openvino"),
    "ov-int8": ("OpenVINO CPU, .int8.onnx (export.quantize)", "int8", "openvino"),
}
DEFAULT_BACKENDS = ("reference", "eager", "torchscript", "aoti", "ort-cpu", "ort-cpu-opt", "ort-cuda", "fp16", "int8", "compile")
CUDA_EXTRA_BACKENDS = ("torch-fp16", "torch-bf16", "ort-cuda-fp16")  # added to the default on a CUDA torch device
DEFAULT_BATCH_SIZES = (1, 8, 32, 128)


def parse_list(text: str | Sequence[str], known: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of names, each checked against `known`; LordkitError names the bad one."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise LordkitError(f"no {what} given; use one of: {', '.join(known)}")
    for item in items:
        if item not in known:
            raise LordkitError(f"unknown {what} {item!r}; use one of: {', '.join(known)}")
    return list(dict.fromkeys(items))


def parse_number(text: str | float, flag: str, kind: type = int) -> float:
    """A number given on the command line, as `kind` (int or float); LordkitError names the flag."""
    try:
        value = kind(str(text).strip())
    except ValueError:
        raise LordkitError(f"{flag} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise LordkitError(f"{flag} must be a finite number, got {text!r}")
    return value


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """Comma-separated batch sizes, each >= 1; sorted, without repeats."""
    try:
        sizes = [int(t) for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    except ValueError:
        raise LordkitError(f"batch sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise LordkitError(f"batch sizes must be >= 1, got {text!r}")
    return sorted(set(sizes))


def check_settings(threads: int | None, warmup: int, iters: int, max_time_s: float,
                   matmul_n: int | None = None) -> None:
    """LordkitError for timing settings that cannot work (before anything slow starts)."""
    if threads is not None and threads < 1:
        raise LordkitError(f"--threads must be >= 1, got {threads}")
    if warmup < 0 or iters < 1 or max_time_s <= 0:
        raise LordkitError(f"need --warmup >= 0, --iters >= 1 and --max-time > 0; got {warmup}, {iters}, {max_time_s:g}")
    if matmul_n is not None and matmul_n < 16:
        raise LordkitError(f"--matmul-size must be >= 16, got {matmul_n}")


def default_backends(torch_device: str) -> list[str]:
    """DEFAULT_BACKENDS, plus the half-precision rows when torch's device is CUDA."""
    return list(DEFAULT_BACKENDS) + (list(CUDA_EXTRA_BACKENDS) if torch_device.startswith("cuda") else [])


def resolve_torch_device(device: str) -> str:
    """"auto": cuda when torch sees a GPU, else cpu (also when torch is missing)."""
    name = (device or "auto").strip().lower()
    index = name[5:] if name.startswith("cuda:") else ""
    if name not in ("auto", "cpu", "cuda") and not (index.isascii() and index.isdigit()):
        raise LordkitError(f"unknown device {device!r}; use one of: auto, cpu, cuda, cuda:N")
    if name == "cpu":
        return "cpu"
    has_cuda = False
    if has_module("torch"):
        import torch

        has_cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise LordkitError(f"--device {device} asked for, but torch sees no CUDA GPU")
    return name

