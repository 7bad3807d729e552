"""AOTInductor packages (`<network>.pt2`): a network compiled ahead of time to native code for libtorch.

`export_aoti(module, example_inputs, path)` runs torch.export with a dynamic batch axis, compiles the
exported program with AOTInductor (`torch._inductor.aoti_compile_and_package`: generated C++ and
its compiled shared library, weights inside) and writes the package atomically. `load_aoti(path)`
loads it in Python; C++ loads the same file with `torch::inductor::AOTIModelPackageLoader`
(examples/aoti). `aoti_parity` runs the gate every exported file passes: max abs error against the
eager module on fresh random inputs at several batch sizes.

Which form: by default the module is exported in the form it holds (lordkit.models: "cpu" on the
CPU, i.e. channels-last, each upsampling + 3x3 conv as one transposed convolution, AdaIN as
group_norm); that form exports, compiles and matches eager as it is. `form="onnx"` exports the ONNX
form instead (NCHW, F.interpolate, elementwise AdaIN, which Inductor fuses itself);
benchmarks/export_formats.py times both.

What a package ties itself to: the libtorch it runs on (the package's code calls libtorch's C shim;
use the torch version that compiled it) and the CPU's instruction sets (Inductor vectorises for the
compiling machine: a package compiled on an AVX-512 machine needs AVX-512; pass
inductor_configs={"cpp.simdlen": 256} to target AVX2). Compiling takes a quarter of a minute to a minute per
network on two cores (a C++ compiler must be installed: Inductor calls it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lordkit.errors import LordkitError
from lordkit.fsutil import atomic_write_bytes

SUFFIX = ".pt2"
MAX_BATCH = 1024  # the dynamic batch axis' upper bound: memory is allocated per call, so a generous one costs nothing
PARITY_BATCHES = (1, 8)
FP32_TOL = 1e-4
PARITY_SEED = 20260102


def file_name(network: str) -> str:
    """The package of one network in an export dir: file_name("transfer") == "transfer.pt2"."""
    return network + SUFFIX


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No third-party warnings or log lines on the user's terminal (torch.export's and Inductor's
    deprecation notices, the package loader's "outdated pt2 file" before it refuses a file)."""
    logger = logging.getLogger("torch._inductor.package")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def batch_dim(max_batch: int) -> Any:
    """A torch.export batch dimension from 1 to max_batch."""
    if not 2 <= max_batch:
        raise ValueError(f"max_batch must be at least 2, got {max_batch}")
    return torch.export.Dim("batch", min=1, max=max_batch)


def export_program(module: nn.Module, example_inputs: tuple[Tensor, ...], dynamic_batch: bool = True,
                   max_batch: int = MAX_BATCH) -> torch.export.ExportedProgram:
    """torch.export of `module` (put it in eval mode first) with axis 0 of every input dynamic, 1..max_batch.

    The example batch must not be 1: torch.export specialises a size-1 axis to a constant."""
    if dynamic_batch and any(x.shape[0] == 1 for x in example_inputs):
        raise ValueError("export with an example batch of 2 or more: a batch of 1 is specialised away")
    shapes = tuple({0: batch_dim(max_batch)} for _ in example_inputs) if dynamic_batch else None
    with quiet():
        return torch.export.export(module, tuple(example_inputs), dynamic_shapes=shapes, strict=False)


def export_aoti(module: nn.Module, example_inputs: tuple[Tensor, ...], path: str | Path, dynamic_batch: bool = True,
                device: str | torch.device = "cpu", *, metadata: Mapping[str, str] | None = None,
                max_batch: int = MAX_BATCH, inductor_configs: Mapping[str, Any] | None = None,
                form: str | None = None) -> Path:
    """Compile `module` with AOTInductor into the package `path` (a `.pt2` file, written atomically).

    example_inputs: one tensor per forward argument, batch >= 2 when dynamic_batch (axis 0 then runs
    from 1 to max_batch; otherwise the package takes exactly the example shapes). device: where the
    package runs ("cpu" or "cuda"; the module and inputs are moved there for the export). metadata:
    strings stored in the package (lordkit.export_format.metadata: network, version, manifest),
    readable from Python (`load_aoti(path).get_metadata()`) and C++ (`get_metadata()`). form: None
    exports the form the module holds ("cpu" on the CPU); "onnx" exports the ONNX form
    (lordkit.models.export_form) and gives the module its own form back afterwards. Returns `path`.
    """
    if form not in (None, "onnx"):
        raise ValueError(f"form must be None (the module's own) or 'onnx', got {form!r}")
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"an AOTInductor package is a {SUFFIX} file, got {path.name}")
    device = torch.device(device)
    module = module.to(device).eval()
    example_inputs = tuple(x.to(device) for x in example_inputs)
    configs = dict(inductor_configs or {})
    if metadata:
        configs["aot_inductor.metadata"] = {str(k): str(v) for k, v in metadata.items()}
    from lordkit.models import export_form

    with torch.no_grad(), (export_form(module) if form == "onnx" else contextlib.nullcontext()):
        program = export_program(module, example_inputs, dynamic_batch, max_batch)
        buf = io.BytesIO()  # the package names its inner directory after a file name: compile in memory
        with quiet():
            torch._inductor.aoti_compile_and_package(program, package_path=buf, inductor_configs=configs)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_aoti(path: str | Path, device_index: int = -1) -> Any:
    """The package at `path`, callable on tensors (returns the output tensor); `.get_metadata()` gives
    the strings stored with it. LordkitError when the file is missing or is not a loadable package."""
    path = Path(path)
    if not path.is_file():
        raise LordkitError(f"AOTInductor package not found: {path}")
    try:
        with quiet():
            return torch._inductor.aoti_load_package(str(path), device_index=device_index)
    except Exception as e:  # torch raises RuntimeError or zipfile errors on a broken package
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LordkitError(f"cannot load AOTInductor package {path}: {first}") from None


def random_inputs(example_inputs: Sequence[Tensor], batch: int, rng: np.random.Generator) -> list[Tensor]:
    """Fresh inputs shaped like the examples at another batch size: images (4-D) uniform in [0, 1],
    codes (2-D) standard normal (wider than trained codes: a harder test), float32 on the CPU."""
    out = []
    for x in example_inputs:
        shape = (batch, *x.shape[1:])
        values = rng.random(shape) if x.dim() == 4 else rng.standard_normal(shape)
        out.append(torch.from_numpy(values.astype(np.float32)))
    return out


def parity_errors(run: Callable[[list[Tensor]], Tensor], module: nn.Module, example_inputs: Sequence[Tensor],
                  batch_sizes: Sequence[int] = PARITY_BATCHES, tolerance: float | None = FP32_TOL,
                  name: str = "file", seed: int = PARITY_SEED) -> dict[int, float]:
    """Max abs error of `run` (an exported file's runner) against the eager `module` on the CPU, per
    batch size, on seeded random inputs; raises LordkitError past `tolerance` (None: never) or on NaN."""
    rng = np.random.default_rng(seed)
    module = module.eval()
    errors = {}
    for batch in batch_sizes:
        inputs = random_inputs(example_inputs, batch, rng)
        with torch.inference_mode():
            expected = module(*inputs).double()
            got = run(inputs)
        if tuple(got.shape) != tuple(expected.shape) or got.dtype != torch.float32:
            raise LordkitError(f"{name} at batch {batch} gave {got.dtype} {tuple(got.shape)}, "
                               f"expected float32 {tuple(expected.shape)}")
        err = float((got.detach().cpu().double() - expected.cpu()).abs().max())
        errors[batch] = err
        if tolerance is not None and not err < tolerance:  # also catches NaN
            raise LordkitError(f"parity check failed: {name} at batch {batch} has max abs error {err:.3g}, "
                               f"tolerance {tolerance:g}")
    return errors


def aoti_parity(module: nn.Module, path: str | Path, example_inputs: Sequence[Tensor],
                batch_sizes: Sequence[int] = PARITY_BATCHES, tolerance: float | None = FP32_TOL) -> dict[int, float]:
    """{batch: max abs error} of the package at `path` against the eager `module` (CPU)."""
    package = load_aoti(path)

    def run(inputs: list[Tensor]) -> Tensor:
        out = package(*inputs)
        return out[0] if isinstance(out, (list, tuple)) else out

    return parity_errors(run, module, example_inputs, batch_sizes, tolerance, name=Path(path).name)

