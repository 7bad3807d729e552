"""onnxruntime sessions: provider choice, threads, and a run path with IO binding on the device.

Two ways to run a model, giving identical results:
- plain: `session.run(...)` with numpy arrays; onnxruntime copies inputs to the device and outputs
  back on every call and allocates output tensors each time.
- bound (the default on CUDA): inputs and outputs live in OrtValues allocated once on the device
  (per input name and batch shape, so at most two shapes per model in a chunked run) and are
  bound with IOBinding. Each call writes the new batch into the existing device buffer
  (`OrtValue.update_inplace`: one host-to-device copy), runs, and reads the output buffer back once.
  Nothing is reallocated and no implicit copies happen. The device may be "cuda" or "cpu", so the
  path is exercised by the CPU-only test suite.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from lordkit import export_format as fmt
from lordkit.errors import LordkitError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDERS = ("auto", "cpu", "cuda")
PROVIDER_NAMES = (*PROVIDERS, "cuda:N")  # as a user writes them
_BUFFER_SHAPES_KEPT = 4  # device buffers kept per tensor name (a chunked run uses two shapes)


@dataclass(frozen=True)
class Device:
    """Where a session runs: onnxruntime's provider list and the IO binding device."""

    kind: str  # "cuda" or "cpu"
    device_id: int = 0

    @property
    def providers(self) -> list:
        if self.kind == "cuda":
            return [(CUDA, {"device_id": self.device_id}), CPU]
        return [CPU]

    def __str__(self) -> str:
        return f"cuda:{self.device_id}" if self.kind == "cuda" else "cpu"


def select_device(provider: str = "auto", warn: Callable[[str], None] | None = None) -> Device:
    """"auto": CUDA when this onnxruntime offers it, else CPU; "cuda" / "cuda:N": CUDA or, with a
    warning, CPU; "cpu": CPU."""
    name = (provider or "auto").strip().lower() if isinstance(provider, str) or provider is None else None
    device_id = 0
    if name is not None and name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit():
        device_id, name = int(name[5:]), "cuda"
    if name not in PROVIDERS:
        raise LordkitError(f"unknown provider {provider!r}; use one of: {', '.join(PROVIDER_NAMES)}")
    available = ort.get_available_providers()
    if name in ("auto", "cuda") and CUDA in available:
        return Device("cuda", device_id)
    if name == "cuda" and warn:
        warn(f"CUDA was asked for but this onnxruntime has no {CUDA} (it offers "
             f"{', '.join(p.replace('ExecutionProvider', '') for p in available)}); running on CPU. "
             "For GPUs install onnxruntime-gpu in place of onnxruntime")
    return Device("cpu")


def session_options(threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings would break one-line CLI output
    if threads is not None:
        if int(threads) < 1:
            raise LordkitError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts


def open_session(path: Path, device: Device, threads: int | None = None,
                 warn: Callable[[str], None] | None = None) -> tuple[ort.InferenceSession, Device]:
    """An InferenceSession on `device`; falls back to CPU (with a warning) when CUDA cannot start."""
    opts = session_options(threads)
    try:
        sess = ort.InferenceSession(str(path), opts, providers=device.providers)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if device.kind == "cuda":
            if warn:
                warn(f"CUDA session for {path.name} failed ({msg}); running on CPU")
            return open_session(path, Device("cpu"), threads, warn)
        raise LordkitError(f"onnxruntime cannot load {path}: {msg}") from None
    if device.kind == "cuda" and CUDA not in sess.get_providers():
        # onnxruntime falls back silently when the CUDA libraries do not load.
        if warn:
            warn(f"CUDA could not start for {path.name} (CUDA or cuDNN libraries missing?); running on CPU")
        device = Device("cpu")
    return sess, device


class OrtModel:
    """One ONNX network: named inputs in, its first output back as a host numpy array.

    io_binding: run through device buffers bound with IOBinding (see the module docstring);
    None = on CUDA only.
    """

    def __init__(self, path: Path, device: Device, threads: int | None = None, io_binding: bool | None = None,
                 warn: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.session, self.device = open_session(self.path, device, threads, warn)
        self.input_names = [i.name for i in self.session.get_inputs()]
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self._output_dims = list(out.shape)  # e.g. ["batch", 3, 64, 64]
        self.io_binding = (self.device.kind == "cuda") if io_binding is None else bool(io_binding)
        self._binding = self.session.io_binding() if self.io_binding else None
        self._buffers: dict[str, OrderedDict[tuple[int, ...], ort.OrtValue]] = {}
        self._lock = threading.Lock()  # one IOBinding and one set of buffers: one call at a time

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {sorted(missing)}")
        arrays = {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in self.input_names}
        if not self.io_binding:
            return self.session.run([self.output_name], arrays)[0]
        with self._lock:
            return self._run_bound(arrays)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> ort.OrtValue:
        """A device tensor for `name` at `shape`, allocated once and reused."""
        per_name = self._buffers.setdefault(name, OrderedDict())
        buf = per_name.get(shape)
        if buf is None:
            buf = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device.kind,
                                                            self.device.device_id)
            per_name[shape] = buf
            while len(per_name) > _BUFFER_SHAPES_KEPT:
                per_name.popitem(last=False)
        else:
            per_name.move_to_end(shape)
        return buf

    def _output_shape(self, batch: int) -> tuple[int, ...] | None:
        dims = [batch] + self._output_dims[1:]
        return tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None

    def _run_bound(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        binding = self._binding
        for name, arr in arrays.items():
            buf = self._buffer("in:" + name, arr.shape)
            buf.update_inplace(arr)  # the one host-to-device copy of this input
            binding.bind_ortvalue_input(name, buf)
        batch = next(iter(arrays.values())).shape[0]
        out_shape = self._output_shape(batch)
        if out_shape is not None:
            out = self._buffer("out:" + self.output_name, out_shape)
            binding.bind_ortvalue_output(self.output_name, out)
        else:  # a non-batch dynamic axis: let onnxruntime allocate on the device
            binding.bind_output(self.output_name, self.device.kind, self.device.device_id)
        self.session.run_with_iobinding(binding)
        if out_shape is None:
            out = binding.get_outputs()[0]
        # numpy() on a CPU OrtValue is a view of the reused buffer: copy before the next call.
        return np.array(out.numpy(), copy=True)


def open_models(paths: dict[str, Path], device: Device, threads: int | None, io_binding: bool | None,
                warn: Callable[[str], None] | None) -> dict[str, OrtModel]:
    """Sessions for several networks on one device (the first CUDA failure moves them all to CPU)."""
    models: dict[str, OrtModel] = {}
    for name, path in paths.items():
        models[name] = OrtModel(path, device, threads, io_binding, warn)
        device = models[name].device
    return models


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def check_contract(model: OrtModel, network: str, img_size: int, channels: int, content_dim: int,
                   class_dim: int) -> None:
    """The session's inputs and outputs must be those of `network` in the export contract: names,
    float32 elements, rank, a dynamic batch axis, and every other dimension the file fixes.

    Metadata can be copied onto any graph; this catches such a file before it runs.
    """
    check_io(model.path.name, network, [(i.name, i.type, list(i.shape)) for i in model.session.get_inputs()],
             [(o.name, o.type, list(o.shape)) for o in model.session.get_outputs()],
             img_size, channels, content_dim, class_dim)


def check_io(name: str, network: str, inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]],
             img_size: int, channels: int, content_dim: int, class_dim: int) -> None:
    """check_contract for any engine: `inputs` / `outputs` are (name, onnxruntime-style element type
    such as "tensor(float)", shape with an int per fixed dim and anything else for a dynamic one)."""
    want_in, want_out = fmt.NETWORK_IO[network]
    got_in = [i[0] for i in inputs]
    got_out = [o[0] for o in outputs]
    if sorted(got_in) != sorted(want_in) or got_out != list(want_out):
        raise LordkitError(f"not a lordkit export: {name} has inputs {got_in} and outputs {got_out}, "
                           f"expected {list(want_in)} and {list(want_out)} for the {network} network")
    for arg_name, arg_type, shape in [*inputs, *outputs]:
        want = fmt.tensor_shape(arg_name, -1, img_size, channels, content_dim, class_dim)
        fixed_ok = all(not isinstance(d, int) or d == w for d, w in zip(shape[1:], want[1:]))
        batch_ok = bool(shape) and not isinstance(shape[0], int)  # B is a dynamic axis in every export
        if arg_type != fmt.TENSOR_ELEMENT_TYPE or len(shape) != len(want) or not fixed_ok or not batch_ok:
            expected = "[batch, " + ", ".join(map(str, want[1:])) + "]"
            raise LordkitError(f"not a lordkit export: {name} has {arg_name} {arg_type} {_dims(shape)}, "
                               f"expected {fmt.TENSOR_ELEMENT_TYPE} {expected} (the manifest's sizes)")
