"""The "openvino" backend: an export's ONNX files read by OpenVINO's CPU plugin (the `openvino` extra).

OpenVINO reads the ONNX files directly (its ONNX frontend; no conversion step, nothing written
beside the export) and compiles them for this CPU. Precisions:
- "fp32": the float32 file, computed in float32 (INFERENCE_PRECISION_HINT f32). The hint is set
  explicitly: on CPUs with native bf16 (AVX-512 BF16, AMX) the plugin's default is bf16, which moves
  outputs about 2e-3 away from onnxruntime's.
- "bf16": the same float32 file computed in bf16 (hint bf16), refused on CPUs without bf16 support
  (OpenVINO would silently run f32 there, and a row labelled bf16 would time float32).
- "int8": the export's *.int8.onnx (QDQ, `lordkit export --int8`); OpenVINO folds the
  Quantize/DequantizeLinear pairs into int8 convolutions and matmuls.
Devices: CPU only ("cuda" asks are run on the CPU with one warning). Threads: INFERENCE_NUM_THREADS.
No torch import here: this module is part of the torch-free runtime.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lordkit import export_format as fmt
from lordkit.errors import LordkitError, Unsupported
from lordkit.runtime.session import PROVIDER_NAMES, PROVIDERS, Device, check_io

INSTALL_HINT = "pip install 'lordkit[openvino]'"
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # INFERENCE_PRECISION_HINT per precision
# The float32 file OpenVINO reads: the plain .onnx, not onnxruntime's *.opt.onnx. OpenVINO folds
# constants and fuses Conv/bias/activation itself when it compiles, so onnxruntime's pre-optimised copy
# gives it nothing (same run time, measured in docs/edge.md) and the plain file is the one every
# export has, whatever its onnxruntime options.
OPTIMIZED_FILE = False


def _first_line(e: BaseException) -> str:
    """OpenVINO's messages start with "Exception from src/...cpp:NN:" and "Check '...' failed at" lines:
    keep the first line that says what (with the next one when it ends in a colon)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from", "Check '", "[ GENERAL_ERROR ]"))] or lines
    if not said:
        return type(e).__name__
    text = said[0]
    for more in said[1:]:
        if not text.endswith(":"):
            break
        text += " " + more
    return text


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise Unsupported(f"the openvino backend needs OpenVINO: {INSTALL_HINT}") from None
    return openvino


def _device(provider: str, warn: Callable[[str], None] | None) -> Device:
    """OpenVINO runs on the CPU here; the provider names are onnxruntime's (session.select_device)."""
    name = (provider or "auto").strip().lower() if isinstance(provider, str) or provider is None else None
    if name is not None and name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit():
        name = "cuda"
    if name not in PROVIDERS:
        raise LordkitError(f"unknown provider {provider!r}; use one of: {', '.join(PROVIDER_NAMES)}")
    if name == "cuda" and warn:
        warn("CUDA was asked for but the openvino backend runs on the CPU; running on CPU "
             "(use --backend onnxruntime with onnxruntime-gpu for GPUs)")
    return Device("cpu")


def _type_name(element_type: Any) -> str:
    """OpenVINO's element type in onnxruntime's words ("tensor(float)"), as the contract check compares."""
    return fmt.TENSOR_ELEMENT_TYPE if element_type.get_type_name() == "f32" else f"tensor({element_type.get_type_name()})"


def _ports(ports: Any) -> list[tuple[str, str, list]]:
    out = []
    for port in ports:
        shape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        names = port.get_names()
        out.append((port.get_any_name() if names else "?", _type_name(port.get_element_type()), dims))
    return out


class OpenVinoModel:
    """One network compiled by OpenVINO: named float32 numpy inputs in, its first output as float32 numpy.

    One infer request per model, used under a lock: one call at a time (lordkit serve's batcher
    calls each model from one thread anyway).
    """

    io_binding = False

    def __init__(self, path: Path, compiled: Any):
        self.path = Path(path)
        self.device = Device("cpu")
        self.compiled = compiled
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {sorted(missing)}")
        arrays = {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in self.input_names}
        with self._lock:
            # share_inputs: OpenVINO reads the numpy arrays in place; outputs come back as new arrays
            # (share_outputs off), not views of the request's buffers that the next call overwrites.
            return self._request.infer(arrays, share_inputs=True)[0]


def has_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_file(core: Any, path: Path, precision: str, threads: int | None) -> Any:
    """`path` read and compiled for the CPU at `precision`'s inference hint; LordkitError (one line) on failure."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        # The ONNX frontend alone: core.read_model offers a file it cannot parse to every frontend in
        # turn, and TensorFlow's logs its own parse errors on stderr.
        from openvino.frontend import FrontEndManager

        onnx = FrontEndManager().load_by_framework("onnx")
        model = onnx.convert(onnx.load(str(path)))
        return core.compile_model(model, "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError / its own types with multi-line messages
        raise LordkitError(f"OpenVINO cannot load {path}: {_first_line(e)}") from None


def new_core(precision: str) -> Any:
    """An OpenVINO Core; Unsupported for a bf16 run on a CPU without bf16."""
    ov = _import_openvino()
    core = ov.Core()
    if precision == "bf16" and not has_bf16(core):
        name = core.get_property("CPU", "FULL_DEVICE_NAME")
        raise Unsupported(f"this CPU ({name}) has no native bf16 (AVX-512 BF16 or AMX), so OpenVINO cannot "
                          "compute in bf16 here; use fp32 or int8")
    return core


def open_openvino(bundle, *, provider: str, precision: str, threads: int | None,
                  warn: Callable[[str], None]) -> dict[str, OpenVinoModel]:
    """One compiled model per runtime network of `bundle`, each checked against the export contract."""
    if precision not in HINTS:
        raise Unsupported(f"the openvino backend runs {', '.join(HINTS)}, not {precision}")
    if threads is not None and int(threads) < 1:
        raise LordkitError(f"threads must be >= 1, got {threads}")
    _device(provider, warn)
    core = new_core(precision)
    models = {}
    for network in fmt.RUNTIME_NETWORKS:
        path = bundle.model_path(network, "int8" if precision == "int8" else "fp32", OPTIMIZED_FILE)
        compiled = compile_file(core, path, precision, threads)
        check_io(path.name, network, _ports(compiled.inputs), _ports(compiled.outputs), bundle.img_size,
                 bundle.channels, bundle.content_dim, bundle.class_dim)
        models[network] = OpenVinoModel(path, compiled)
    return models
