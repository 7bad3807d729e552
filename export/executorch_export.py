"""ExecuTorch programs (`<network>.pte`, int8: `<network>.int8.pte`): a network for ExecuTorch's C++
runtime (phones, small boards; no libtorch), its convolutions and matrix products delegated to XNNPACK.

`export_executorch(module, example_inputs, path)`: torch.export with a dynamic batch axis (1 to
`max_batch`), `to_edge_transform_and_lower` with the XNNPACK partitioner, `to_executorch`, and the
program's bytes written atomically. `load_executorch(path)` runs a file in ExecuTorch's Python
runtime (`executorch.runtime`); `executorch_parity` checks it against the eager module.
examples/executorch runs the same file from C++.

Measured facts the code relies on (executorch 1.5.1, torch 2.13):
- Form: the "onnx" form (lordkit.models.export_form: NCHW, F.interpolate, elementwise AdaIN). The
  "cpu" form exports and lowers but does not run: group_norm stays outside XNNPACK and ExecuTorch's
  portable group_norm kernel refuses a channels-last tensor (error 0x12, "Expected tensor to have
  default dim order"). In the onnx form everything but the nearest upsampling and a few selects runs
  inside XNNPACK.
- Dynamic batch works, with a bound: ExecuTorch plans every intermediate buffer for the batch
  axis' upper bound, so `max_batch` sets the memory a loaded program holds (default 8).
- During lowering, XNNPACK's layout pass re-runs each convolution on fake tensors, and PyTorch's CPU
  convolution-backend choice (oneDNN / NNPACK, "batch >= 16") guards on the batch symbol, narrowing
  its range to 1..15 whatever `max_batch` says; a program then refuses batch 16 at run time. Lowering
  with oneDNN and NNPACK switched off (they only steer that fake-tensor choice here) keeps the bound.
- int8 (`quantize="int8"`): ExecuTorch's own flow, the XNNPACK quantizer (symmetric int8, weights
  per channel) with torchao's prepare_pt2e / convert_pt2e, calibrated on `calibration` batches;
  quantized convolutions and linears run in XNNPACK, AdaIN and the upsampling stay float32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from lordkit.errors import LordkitError
from lordkit.export.aoti import FP32_TOL, PARITY_BATCHES, export_program, parity_errors
from lordkit.fsutil import atomic_write_bytes

SUFFIX = ".pte"
QUANTIZE = (None, "int8")
MAX_BATCH = 8  # planned memory grows with it; phones and boards run batch 1
META_METHOD = "lordkit_json"  # constant method: the metadata strings as one JSON object
MAX_BATCH_METHOD = "max_batch"  # constant method: the batch axis' upper bound (the example batch if static)
INT8_TOL = 0.1  # int8 parity bound on images in [0, 1] (see docs in the README of examples/executorch)
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")  # import-time warnings of the int8 stack's packages


def file_name(network: str, quantize: str | None = None) -> str:
    """file_name("transfer") == "transfer.pte", file_name("transfer", "int8") == "transfer.int8.pte"."""
    return network + (f".{quantize}" if quantize else "") + SUFFIX


@contextlib.contextmanager
def _quiet_python() -> Iterator[None]:
    """No third-party warnings or log lines on the user's terminal while exporting and lowering."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send the process' stderr (file descriptor 2: ExecuTorch's C++ log lines) to a temporary file
    for the block; the list it yields holds the captured lines afterwards."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        with contextlib.suppress(Exception):  # a closed or replaced sys.stderr
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _runtime_error(lines: Sequence[str]) -> str:
    """The first line ExecuTorch logged about a failure (its CPU probing at load is not one)."""
    lines = [line.strip() for line in lines if line.strip() and "cpuinfo_utils" not in line]
    return lines[0] if lines else ""


def check_executorch() -> str | None:
    """Why ExecuTorch cannot export here (a one-line reason), or None when it can."""
    try:
        with _quiet_python():
            import executorch.exir  # noqa: F401
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
            from executorch.runtime import Runtime  # noqa: F401
    except ImportError as e:
        return f"executorch is not installed or incomplete ({e}); pip install 'lordkit[executorch]'"
    return None


def _quantized(program: torch.export.ExportedProgram, example_inputs: tuple[Tensor, ...],
               calibration: Sequence[Sequence[Tensor]] | None, dynamic_batch: bool,
               max_batch: int) -> torch.export.ExportedProgram:
    """The program with int8 convolutions and linears (XNNPACK quantizer, pt2e), re-exported."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    for batch in calibration if calibration is not None else [example_inputs]:
        prepared(*batch)
    converted = convert_pt2e(prepared)
    return export_program(converted, example_inputs, dynamic_batch, max_batch)


def export_executorch(module: nn.Module, example_inputs: tuple[Tensor, ...], path: str | Path,
                      quantize: str | None = None, *, dynamic_batch: bool = True, max_batch: int = MAX_BATCH,
                      metadata: Mapping[str, str] | None = None,
                      calibration: Sequence[Sequence[Tensor]] | None = None) -> Path:
    """Lower `module` to an ExecuTorch program delegated to XNNPACK and write it to `path` (atomically).

    example_inputs: one CPU float32 tensor per forward argument, batch >= 2 when dynamic_batch (axis
    0 then runs from 1 to max_batch; otherwise exactly the example batch). quantize: None (float32)
    or "int8", calibrated on `calibration` (a list of input tuples; default: the example inputs).
    metadata: strings stored in the program as the constant method `lordkit_json` (a JSON object);
    the batch bound is the constant method `max_batch`. The module is exported in the "onnx" form
    and gets its own form back afterwards. Returns `path`.
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"an ExecuTorch program is a {SUFFIX} file, got {path.name}")
    reason = check_executorch()
    if reason:
        raise LordkitError(reason)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from lordkit.models import export_form

    example_inputs = tuple(x.detach().cpu().float().contiguous() for x in example_inputs)
    constants: dict[str, Any] = {META_METHOD: json.dumps(dict(metadata or {})),
                                 MAX_BATCH_METHOD: max_batch if dynamic_batch else int(example_inputs[0].shape[0])}
    with _quiet_python(), torch.no_grad(), export_form(module.eval()):
        program = export_program(module, example_inputs, dynamic_batch, max_batch)
        if quantize == "int8":
            program = _quantized(program, example_inputs, calibration, dynamic_batch, max_batch)
        # oneDNN and NNPACK off: their batch >= 16 test would narrow the batch range while lowering.
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               constant_methods=constants)
            et_program = edge.to_executorch()
    atomic_write_bytes(path, et_program.buffer)
    return path


class ExecuTorchProgram:
    """A `.pte` file loaded in ExecuTorch's Python runtime: call it on tensors, read its metadata."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise LordkitError(f"ExecuTorch program not found: {self.path}")
        reason = check_executorch()
        if reason:
            raise LordkitError(reason)
        from executorch.runtime import Runtime

        with captured_stderr() as log:  # the runtime logs CPU probing at info level on every load
            try:
                self.program = Runtime.get().load_program(self.path)
                self.forward = self.program.load_method("forward")
            except Exception as e:
                error = e
            else:
                error = None
        if error is not None:
            detail = _runtime_error(log) or str(error)
            raise LordkitError(f"cannot load ExecuTorch program {self.path}: {detail}")

    def _constant(self, method: str) -> Any:
        if method not in self.program.method_names:
            return None
        return self.program.load_method(method).execute([])[0]

    def metadata(self) -> dict[str, str]:
        """The strings export_executorch stored (empty for a program written elsewhere)."""
        text = self._constant(META_METHOD)
        return json.loads(text) if isinstance(text, str) and text else {}

    def max_batch(self) -> int | None:
        """The largest batch the program takes (None for a program written elsewhere)."""
        if not hasattr(self, "_max_batch"):
            value = self._constant(MAX_BATCH_METHOD)
            self._max_batch = int(value) if value is not None else None
        return self._max_batch

    def __call__(self, *inputs: Tensor) -> Tensor:
        limit = self.max_batch()
        if limit is not None and inputs and inputs[0].shape[0] > limit:
            raise LordkitError(f"{self.path.name} takes batches of at most {limit}, got {inputs[0].shape[0]}")
        with captured_stderr() as log:
            try:
                out = self.forward.execute([x.detach().cpu().float().contiguous() for x in inputs])
            except Exception as e:
                error = e
            else:
                error = None
        if error is not None:
            raise LordkitError(f"{self.path.name} failed to run: {_runtime_error(log) or error}")
        return out[0]


def load_executorch(path: str | Path) -> ExecuTorchProgram:
    """The program at `path` in ExecuTorch's Python runtime (LordkitError when it cannot load)."""
    return ExecuTorchProgram(path)


def executorch_parity(module: nn.Module, path: str | Path, example_inputs: Sequence[Tensor],
                      batch_sizes: Sequence[int] = PARITY_BATCHES,
                      tolerance: float | None = FP32_TOL) -> dict[int, float]:
    """{batch: max abs error} of the program at `path` against the eager `module` (CPU)."""
    program = load_executorch(path)
    return parity_errors(lambda inputs: program(*inputs), module, example_inputs, batch_sizes, tolerance,
                         name=Path(path).name)
