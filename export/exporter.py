"""Export a trained model dir to ONNX, TorchScript, AOTInductor and ExecuTorch, verified against the eager model.

Every network goes through the same steps (`export_network`): eval(), reference outputs under
inference_mode, then one function per format (`FORMAT_EXPORTERS`: `export_onnx_files`,
`export_torchscript_file`, `export_aoti_file`, `export_executorch_file`) writes its files with a
dynamic batch axis, and every file passes the same gate (`check_file`): onnx.checker, metadata and
opset for ONNX files, then numeric parity against onnxruntime (CPU), the reloaded TorchScript module,
the loaded AOTInductor package or ExecuTorch's Python runtime on fresh random inputs. ONNX files come from
torch.onnx's torch.export-based exporter (`ONNX_EXPORTERS`: "torch.export", the default) or its
TorchScript-based one ("legacy"); the manifest records which, with the torch version. The export dir is
built under a temporary name and renamed into place only when every file has passed, so a failed
export leaves nothing behind. The file layout and manifest are specified in docs/export-format.md.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

import lordkit
from lordkit import export_format as fmt
from lordkit.config import ModelConfig
from lordkit.console import console, make_progress
from lordkit.errors import LordkitError
from lordkit.export.onnxmeta import write_metadata, writing
from lordkit.fsutil import atomic_write_bytes, atomic_write_json, check_can_create, staged_dir
from lordkit.modeldir import (DATA_RECORD, load_amortized, load_class_bank, load_config, load_data_record,
                              record_class_names)
from lordkit.models import AmortizedModel, eager_networks, export_form

ONNX_EXPORTERS = fmt.ONNX_EXPORTERS  # ("torch.export", "legacy"): torch.onnx.export with dynamo=True / False
DEFAULT_ONNX_EXPORTER = "torch.export"
# Opsets each ONNX exporter writes, as (lowest, highest). 13: Resize with scales and every op the networks
# use have their current form from 13 on. 18: the lowest opset the torch.export-based exporter has ops for
# (below it, its version converter fails on ReduceMean's axes and Reshape). 20: the newest opset the
# TorchScript-based exporter writes and onnxruntime 1.17 (the oldest the runtime supports) reads.
OPSETS = {"torch.export": (18, 20), "legacy": (13, 20)}
MIN_OPSET = min(lo for lo, _ in OPSETS.values())
MAX_OPSET = max(hi for _, hi in OPSETS.values())
DEFAULT_OPSET = 18
FP32_TOL = 1e-4
FP16_TOL = 1e-2
BATCH_SIZES = (1, 3, 8)
EXPORT_BATCH = 2  # example batch for tracing: not 1, so no size-1 axis gets specialised away
PARITY_SEED = 20260101  # parity inputs are seeded (reproducible) and never the tracing inputs
ORT_PROVIDERS = ["CPUExecutionProvider"]
# AdaIN's module path: adain_conv_layers.N.norm (lordkit.models.AdaINConvBlock's `norm`). The
# torch.export-based exporter keeps module paths in each node's metadata (NAME_SCOPES); the
# TorchScript-based one puts them in node names (/generator/adain_conv_layers.0/norm/ReduceMean).
ADAIN_SCOPE = re.compile(r"(^|[./])adain_conv_layers\.\d+[./]norm([./]|$)")
NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # e.g. "['', 'generator', 'generator.adain_conv_layers.0', ...]"


@dataclass
class Network:
    """One exported network: its eager module and named inputs and outputs."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def networks(model: AmortizedModel) -> list[Network]:
    """The four exported networks, sharing (not copying) the amortized model's submodules."""
    modules = eager_networks(model)
    return [Network(name, modules[name], *io) for name, io in fmt.NETWORK_IO.items()]


def tensor_shape(name: str, cfg: ModelConfig, batch: int) -> tuple[int, ...]:
    """Shape of a named input or output at a given batch size."""
    return fmt.tensor_shape(name, batch, cfg.img_size, cfg.channels, cfg.content_dim, cfg.class_dim)


def random_inputs(net: Network, cfg: ModelConfig, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Images uniform in [0, 1]; codes standard normal (wider than trained codes: a harder test)."""
    out = []
    for name in net.inputs:
        shape = tensor_shape(name, cfg, batch)
        x = rng.random(shape) if name.endswith("image") else rng.standard_normal(shape)
        out.append(x.astype(np.float32))
    return out


# ----------------------------------------------------------------------------------------------
# Writers. Each is a separate function so that tests can intercept one step.


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No third-party warnings on the user's terminal: the TorchScript-based exporters' deprecation
    notices (chosen on purpose) and TracerWarnings, whose worry (a shape specialised away) the parity
    check at several batch sizes settles for real."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# Loggers that the torch.export-based exporter's steps write warnings to (torch's own, with their own
# handlers: "torchvision is not installed", dynamic-shape notes; onnxscript's optimiser and converter).
_EXPORT_LOGGERS = ("torch", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """_quiet, and the exporter's loggers at ERROR for the block; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in _EXPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with _quiet():
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example_inputs(net: Network, cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)  # a private stream: the caller's global RNG is left alone
    return tuple(torch.rand(tensor_shape(n, cfg, EXPORT_BATCH), generator=gen) for n in net.inputs)


def _export_onnx(module: nn.Module, net: Network, cfg: ModelConfig, path: Path, opset: int,
                 exporter: str = DEFAULT_ONNX_EXPORTER) -> None:
    """torch.onnx.export of `module` in its exportable form to one self-contained file at `path`,
    with a dynamic batch axis, by the chosen exporter (ONNX_EXPORTERS)."""
    with export_form(module):
        if exporter == "legacy":
            _export_onnx_legacy(module, net, cfg, path, opset)
        else:
            _export_onnx_torch_export(module, net, cfg, path, opset)


def _export_onnx_legacy(module: nn.Module, net: Network, cfg: ModelConfig, path: Path, opset: int) -> None:
    """The TorchScript-based exporter (dynamo=False): traces the module."""
    with _quiet():
        torch.onnx.export(
            module, _example_inputs(net, cfg), str(path), input_names=list(net.inputs),
            output_names=list(net.outputs), dynamic_axes={n: {0: "batch"} for n in net.inputs + net.outputs},
            opset_version=opset, do_constant_folding=True, dynamo=False)


def _export_onnx_torch_export(module: nn.Module, net: Network, cfg: ModelConfig, path: Path, opset: int) -> None:
    """The torch.export-based exporter (dynamo=True, onnxscript's op library and optimiser): a graph
    captured by torch.export with the batch axis a symbolic dimension, so nothing is specialised to
    the example's batch. Weights are kept inside the file (no external data), and each node's
    metadata is cut to its module path (`_keep_module_paths`)."""
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with _quiet_logs():
        program = torch.onnx.export(
            module, _example_inputs(net, cfg), None, input_names=list(net.inputs),
            output_names=list(net.outputs), dynamic_shapes=tuple({0: batch} for _ in net.inputs),
            opset_version=opset, dynamo=True, external_data=False, optimize=True, verbose=False)
        model = program.model_proto
    _keep_module_paths(model.graph)
    onnx.save(model, str(path))


def _keep_module_paths(graph) -> None:
    """Drop every node's metadata but its module path (NAME_SCOPES): the exporter also records the
    Python stack trace (source paths of the machine that exported) and the FX node of every op."""
    for node in graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key == NAME_SCOPES]
        del node.metadata_props[:]
        for key, value in keep:
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value


def _module_paths(node) -> list[str]:
    """The module paths a node came from: its NAME_SCOPES metadata (torch.export-based exporter),
    else its name (TorchScript-based exporter)."""
    for p in node.metadata_props:
        if p.key == NAME_SCOPES:
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return [p.value]
            return [str(x) for x in scopes] if isinstance(scopes, (list, tuple)) else [str(scopes)]
    return [node.name]


def _is_adain(node) -> bool:
    return any(ADAIN_SCOPE.search(path) for path in _module_paths(node))


def _convert_fp16(src: Path, dst: Path) -> None:
    """Half-precision copy of an fp32 ONNX file, float32 at the inputs and outputs, AdaIN kept in float32.

    Converting the graph, not tracing a .half() model: PyTorch's fp16 convolutions on CPU take
    minutes at real sizes. AdaIN nodes are found by their module path (adain_conv_layers.N.norm,
    `_is_adain`) and stay float32 as in lordkit.models.adain: its variance would overflow fp16 easily.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    adain = [n.name for n in model.graph.node if _is_adain(n)]
    # AdaIN's statistics are its only ReduceMeans: one left out of the list would be computed in fp16.
    stray = [n.name for n in model.graph.node if n.op_type == "ReduceMean" and n.name not in adain]
    if stray or len(set(adain)) != len(adain):
        raise LordkitError(f"{src.name}: cannot tell the AdaIN nodes by their module path "
                           f"({stray[0] if stray else 'node names repeat'}); fp16 needs them kept in float32")
    # The converter retypes value_info entries but not the float32 initializers that AdaIN keeps: the
    # torch.export-based exporter's value_info (types of initializers too) would then contradict them.
    del model.graph.value_info[:]
    with _quiet():
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST,
                                        node_block_list=adain)
    _topological_sort(half.graph)  # the converter appends its input Casts after their consumers
    onnx.save(half, str(dst))


def _ort_options():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings would print on the user's terminal
    return opts


def _topological_sort(graph) -> None:
    """Reorder graph.node so every node follows the producers of its inputs (stable otherwise)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise LordkitError(f"graph {graph.name!r} has a cycle or an undefined input")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            known.update(n.output)
        ordered += ready
    nodes = [copy.deepcopy(n) for n in ordered]  # protobuf repeated fields cannot hold aliases
    del graph.node[:]
    graph.node.extend(nodes)


def _optimise_onnx(src: Path, dst: Path) -> None:
    """onnxruntime's offline optimisation at the basic level: only ONNX ops, portable across providers."""
    import onnx
    import onnxruntime as ort

    opts = _ort_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), opts, providers=ORT_PROVIDERS)
    except Exception as e:
        # onnxruntime reports a failed write as "Protobuf serialization failed", without the cause:
        # writing as many bytes ourselves shows whether the disk refused them.
        _probe_write(dst, src.stat().st_size)
        raise LordkitError(f"onnxruntime could not optimise {src.name}: {_first_line(e)}") from None
    # onnxruntime declares all its own op domains; keep only those the graph uses, for other tools.
    model = onnx.load(str(dst))
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.save(model, str(dst))


def _probe_write(path: Path, n_bytes: int) -> None:
    """Write n_bytes to `path` and remove it: an OSError here names the disk's fault (no space, too large)."""
    chunk = b"\0" * min(n_bytes, 1 << 20)
    try:
        with open(path, "wb") as f:
            for _ in range(0, n_bytes, len(chunk) or 1):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _export_torchscript(module: nn.Module, path: Path, extra: str) -> None:
    """torch.jit.script (no tracing: nothing specialised to a shape), frozen so weights become constants.

    Saved to memory and written by Python: torch.jit.save's own file writer aborts the whole process
    (std::terminate) when the disk refuses a write, where Python raises an OSError that can be reported.
    """
    with _quiet():
        frozen = torch.jit.freeze(torch.jit.script(module.eval()))
        buf = io.BytesIO()
        torch.jit.save(frozen, buf, _extra_files={fmt.TORCHSCRIPT_EXTRA: extra})
    with open(path, "wb") as f:
        f.write(buf.getbuffer())


def _check_onnx(path: Path, props: dict[str, str]) -> None:
    """onnx.checker, one file (no external data), the metadata stamped on it and the manifest's opset."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise LordkitError(f"onnx.checker rejected {path.name}: {str(e).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    got = {p.key: p.value for p in model.metadata_props}
    missing = [k for k, v in props.items() if got.get(k) != v]
    if missing:
        raise LordkitError(f"{path.name} lost its metadata ({', '.join(missing)})")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise LordkitError(f"{path.name} keeps weights in another file; an export's ONNX files are self-contained")
    want = json.loads(props[fmt.META_MANIFEST]).get("opset")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if want is not None and opset != want:
        raise LordkitError(f"{path.name} has opset {opset}, not the {want} asked for")


# ----------------------------------------------------------------------------------------------
# Parity.


class _Runner:
    """Runs one exported file on numpy inputs: an onnxruntime session, a reloaded TorchScript module,
    an AOTInductor package (on the device it was compiled for) or an ExecuTorch program."""

    def __init__(self, path: Path, net: Network):
        self.path = path
        self.net = net
        self.device = torch.device("cpu")
        if path.suffix == ".pt2":
            from lordkit.export.aoti import load_aoti

            self.module = load_aoti(path)
            device = json.loads(self.module.get_metadata().get(fmt.META_MANIFEST, "{}")).get("aoti_device") or "cpu"
            self.device = torch.device(device)
            self.backend = f"aoti-{device}"
        elif path.suffix == ".pte":
            from lordkit.export.executorch_export import load_executorch

            self.backend = "executorch-cpu"
            self.module = load_executorch(path)
        elif path.suffix == ".onnx":
            import onnxruntime as ort

            self.backend = "onnxruntime-cpu"
            opts = _ort_options()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads yield to torch's
            self.session = ort.InferenceSession(str(path), opts, providers=ORT_PROVIDERS)
        else:
            self.backend = "torchscript-cpu"
            with _quiet():
                extra = {fmt.TORCHSCRIPT_EXTRA: ""}
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            if not extra[fmt.TORCHSCRIPT_EXTRA]:
                raise LordkitError(f"{path.name} lost its {fmt.TORCHSCRIPT_EXTRA} extra file")

    def __call__(self, inputs: list[np.ndarray]) -> np.ndarray:
        if self.backend.startswith("onnxruntime"):
            return self.session.run([self.net.outputs[0]], dict(zip(self.net.inputs, inputs)))[0]
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(x).to(self.device) for x in inputs))
            out = out[0] if isinstance(out, (list, tuple)) else out  # an AOTInductor package returns a list
            return out.cpu().numpy()


def check_parity(path: Path, net: Network, references: dict[int, tuple[list[np.ndarray], np.ndarray]],
                 tolerance: float) -> list[dict[str, Any]]:
    """Max abs error of one file against the eager outputs at every batch size; raises past `tolerance`."""
    runner = _Runner(path, net)
    rows = []
    for batch, (inputs, expected) in references.items():
        try:
            got = runner(inputs)
        except Exception as e:  # onnxruntime and TorchScript raise their own types on a broken graph
            raise LordkitError(f"{net.name}: {path.name} failed to run at batch {batch}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if got.shape != expected.shape or got.dtype != np.float32:
            raise LordkitError(f"{net.name}: {path.name} at batch {batch} gave {got.dtype} {tuple(got.shape)}, "
                               f"expected float32 {tuple(expected.shape)}")
        err = float(np.max(np.abs(got.astype(np.float64) - expected)))
        rows.append({"model": net.name, "file": path.name, "backend": runner.backend, "batch": batch,
                     "max_abs_err": err, "tolerance": tolerance})
        if not err < tolerance:  # also catches NaN
            raise LordkitError(f"parity check failed for {net.name}: {path.name} ({runner.backend}) at batch "
                               f"{batch} has max abs error {err:.3g}, tolerance {tolerance:g}")
    return rows


def parity_table(rows: Sequence[dict[str, Any]]):
    """The parity rows as a rich table: one line per file, one column per batch size."""
    from rich.table import Table

    batches = sorted({r["batch"] for r in rows})
    by_file: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_file.setdefault((r["file"], r["backend"]), {})[r["batch"]] = r
    table = Table(title=f"max abs error vs eager PyTorch on CPU (limit {FP32_TOL:g} fp32, {FP16_TOL:g} fp16)")
    table.add_column("file", no_wrap=True)
    table.add_column("backend", no_wrap=True)
    for b in batches:
        table.add_column(f"B={b}", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for (file, backend), cells in by_file.items():
        ok = len(cells) == len(batches) and all(c["max_abs_err"] < c["tolerance"] for c in cells.values())
        errs = [f"{cells[b]['max_abs_err']:.1e}" if b in cells else "-" for b in batches]
        table.add_row(file, backend.removesuffix("-cpu"), *errs, "[green]ok[/]" if ok else "[red]FAIL[/]")
    return table


# ----------------------------------------------------------------------------------------------
# The export.


# The formats `lordkit export` writes, in the order it writes them (FORMAT_EXPORTERS), and the
# manifest `files` kinds each adds (onnx_fp16 and executorch_int8 only when asked for).
FORMATS = ("onnx", "torchscript", "aoti", "executorch")


def file_kinds(formats: Sequence[str], fp16: bool = False, executorch_int8: bool = False) -> list[str]:
    kinds = {"onnx": ["onnx", "onnx_opt"] + (["onnx_fp16"] if fp16 else []), "torchscript": ["torchscript"],
             "aoti": ["aoti"], "executorch": ["executorch"] + (["executorch_int8"] if executorch_int8 else [])}
    return [k for f in formats for k in kinds[f]]


def _file_table(kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    """models section of the manifest: inputs, outputs and files of each network."""
    return {name: {"inputs": list(inputs), "outputs": list(outputs),
                   "files": {kind: fmt.file_name(name, kind) for kind in kinds}}
            for name, (inputs, outputs) in fmt.NETWORK_IO.items()}


def check_onnx_exporter(exporter: str) -> str:
    if exporter not in ONNX_EXPORTERS:
        raise LordkitError(f"unknown --onnx-exporter {exporter!r}; use one of: {', '.join(ONNX_EXPORTERS)}")
    return exporter


def check_opset(opset: int, exporter: str = DEFAULT_ONNX_EXPORTER) -> int:
    """The opset as an int, within what `exporter` writes (OPSETS); LordkitError naming the range."""
    lo, hi = OPSETS[check_onnx_exporter(exporter)]
    if not isinstance(opset, int) or isinstance(opset, bool) or not lo <= opset <= hi:
        other = [f"{a} to {b} with --onnx-exporter {e}" for e, (a, b) in OPSETS.items() if e != exporter]
        hint = f" ({'; '.join(other)})" if isinstance(opset, int) and any(
            a <= opset <= b for e, (a, b) in OPSETS.items()) else ""
        raise LordkitError(f"--opset must be an integer from {lo} to {hi}, got {opset!r}{hint}")
    return opset


def check_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """Refuse, before any slow work, an export dir that cannot be written or must not be replaced.

    An existing dir is replaced only with `force`, and only when it is an export (it has a manifest)
    or empty: `--out ~ --force` must not delete a home directory. Missing parents are created later,
    so the nearest existing ancestor must be a writable directory.
    """
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir):
        if not out_dir.is_dir():
            raise LordkitError(f"{out_dir} is a file, not an export dir; remove it or choose another --out")
        if not force:
            raise LordkitError(f"export {out_dir} already exists; pass --force to replace it")
        try:
            with os.scandir(out_dir) as entries:
                empty = next(entries, None) is None
        except OSError as e:
            raise LordkitError(f"cannot read {out_dir} to replace it: {e.strerror or e}") from None
        if not empty and not (out_dir / fmt.MANIFEST).is_file():
            raise LordkitError(f"{out_dir} is not an export dir (no {fmt.MANIFEST}); --force replaces exports only, "
                               "choose another --out")
    check_can_create(out_dir.absolute().parent)
    return out_dir


def check_aoti_device(device: str | None) -> str:
    """Where AOTInductor packages are compiled for: "cpu", "cuda", or None = CUDA when torch has a GPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in fmt.AOTI_DEVICES:
        raise LordkitError(f"unknown --aoti-device {device!r}; use one of: {', '.join(fmt.AOTI_DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise LordkitError("--aoti-device cuda needs a GPU that torch can use; this torch sees none")
    return device


def check_compiler() -> None:
    """AOTInductor compiles C++: refuse before the export when no compiler is on PATH."""
    import shutil

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(n) for n in names):
        raise LordkitError(f"--aoti compiles C++ and finds no compiler ({' / '.join(names)} on PATH); "
                           "install g++ (e.g. apt-get install g++) or set CXX")


def check_export_options(onnx: bool, torchscript: bool, fp16: bool, opset: int,
                         batch_sizes: Sequence[int], onnx_exporter: str = DEFAULT_ONNX_EXPORTER, *,
                         aoti: bool = False, executorch: bool = False) -> tuple[int, ...]:
    """Refuse contradictory options before any work; returns the parity batch sizes as ints."""
    if not (onnx or torchscript or aoti or executorch):
        raise LordkitError("nothing to export: pass --onnx, --torchscript, --aoti or --executorch")
    if aoti:
        check_compiler()
    if executorch:
        from lordkit.export.executorch_export import check_executorch

        reason = check_executorch()
        if reason:
            raise LordkitError(reason)
    if fp16 and not onnx:
        raise LordkitError("--fp16 makes half-precision ONNX files; it needs --onnx")
    if onnx:
        check_opset(opset, onnx_exporter)
    batch_sizes = tuple(int(b) for b in batch_sizes)
    if not batch_sizes or min(batch_sizes) < 1:
        raise LordkitError(f"batch sizes must be >= 1, got {batch_sizes}")
    return batch_sizes


def exporter_versions(onnx: bool, onnx_exporter: str) -> dict[str, Any]:
    """The manifest's record of what wrote the files: the ONNX exporter and the versions behind it."""
    onnxscript_version = None
    if onnx and onnx_exporter == "torch.export":
        import onnxscript

        onnxscript_version = onnxscript.__version__
    return {"onnx_exporter": onnx_exporter if onnx else None, "torch_version": torch.__version__,
            "onnxscript_version": onnxscript_version}


def manifest_fields(model_dir: Path, mc: ModelConfig, *, formats: Sequence[str], fp16: bool,
                    opset: int, onnx_exporter: str = DEFAULT_ONNX_EXPORTER, aoti_device: str | None = None,
                    executorch_int8: bool = False) -> dict[str, Any]:
    """The manifest without hashes and parity, from the model's config and data record; LordkitError
    naming the data record where it cannot go into a manifest."""
    data = load_data_record(model_dir)
    face_template = data.get("face_template") or None
    meta: dict[str, Any] = {
        "format": fmt.FORMAT, "lordkit_version": lordkit.__version__, "model_name": model_dir.name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "img_size": mc.img_size, "channels": mc.channels, "layout": "NCHW", "value_range": [0.0, 1.0],
        "dtype": "float32", "content_dim": mc.content_dim, "class_dim": mc.class_dim,
        "class_names": record_class_names(model_dir, data, mc.n_classes), "dataset_id": data.get("dataset_id"),
        "face_template": face_template,
        "face_points": data.get("face_points") or (fmt.FACE_POINTS_DEFAULT if face_template else None),
        "opset": opset if "onnx" in formats else None,
        **exporter_versions("onnx" in formats, onnx_exporter),
        "aoti_device": aoti_device if "aoti" in formats else None,
        "models": _file_table(file_kinds(formats, fp16, executorch_int8)),
        "class_bank": fmt.CLASS_BANK,
    }
    # The data record's fields go into the manifest unchanged: check them as a reader of the export will.
    all_files = [fmt.CLASS_BANK] + [f for m in meta["models"].values() for f in m["files"].values()]
    problem = fmt.manifest_problem({**meta, "sha256": {f: "0" * 64 for f in all_files}})
    if problem:
        raise LordkitError(f"{model_dir / DATA_RECORD} cannot go into an export manifest: {problem}")
    return meta


@dataclass
class ExportJob:
    """What every per-network step of one export shares."""

    tmp: Path  # the staged export dir, where files are written
    out_dir: Path  # the name it takes when complete: errors name files there
    cfg: ModelConfig
    opset: int
    fp16: bool
    meta_json: str  # the manifest without hashes and parity, stamped on every file
    onnx_exporter: str = DEFAULT_ONNX_EXPORTER  # one of ONNX_EXPORTERS
    aoti_device: str = "cpu"  # where the AOTInductor packages run
    executorch_max_batch: int = 8  # the ExecuTorch programs' batch bound

    def props(self, name: str) -> dict[str, str]:
        """The metadata stamped on every file of network `name`."""
        return fmt.metadata(name, lordkit.__version__, self.meta_json)

    def writing(self, path: Path):
        """A full disk while writing `path` is one line naming the export's file."""
        return writing(self.out_dir / path.name)


# A format's exporter writes one network's files of that format into the staged dir and returns
# them with their parity tolerances; every file then passes `check_file`.
FileExporter = Callable[[Network, dict[str, str], ExportJob], list[tuple[Path, float]]]


def export_onnx_files(net: Network, files: dict[str, str], job: ExportJob) -> list[tuple[Path, float]]:
    """ONNX: export, stamp metadata, optimise; with fp16 also the half-precision copy."""
    plain, opt = job.tmp / files["onnx"], job.tmp / files["onnx_opt"]
    with job.writing(plain):
        _export_onnx(net.module, net, job.cfg, plain, job.opset, job.onnx_exporter)
        write_metadata(plain, job.props(net.name))
    with job.writing(opt):
        _optimise_onnx(plain, opt)
    written = [(plain, FP32_TOL), (opt, FP32_TOL)]
    if job.fp16:
        half = job.tmp / files["onnx_fp16"]
        with job.writing(half):
            _convert_fp16(plain, half)  # keeps the metadata stamped on `plain`
        written.append((half, FP16_TOL))
    return written


def export_torchscript_file(net: Network, files: dict[str, str], job: ExportJob) -> list[tuple[Path, float]]:
    """TorchScript: script, freeze, save with the metadata as an extra file."""
    ts = job.tmp / files["torchscript"]
    with job.writing(ts):
        _export_torchscript(net.module, ts, json.dumps(job.props(net.name)))
    return [(ts, FP32_TOL)]


def export_aoti_file(net: Network, files: dict[str, str], job: ExportJob) -> list[tuple[Path, float]]:
    """AOTInductor: torch.export, compile to a .pt2 package for `job.aoti_device`, metadata inside."""
    from lordkit.export.aoti import export_aoti

    path = job.tmp / files["aoti"]
    module = copy.deepcopy(net.module) if job.aoti_device != "cpu" else net.module  # the CPU copy stays the reference
    with job.writing(path):
        export_aoti(module, _example_inputs(net, job.cfg), path, device=job.aoti_device, metadata=job.props(net.name))
    return [(path, FP32_TOL)]


def export_executorch_file(net: Network, files: dict[str, str], job: ExportJob) -> list[tuple[Path, float]]:
    """ExecuTorch: torch.export, lower to XNNPACK, a .pte program with the metadata as a constant method."""
    from lordkit.export.executorch_export import export_executorch

    path = job.tmp / files["executorch"]
    with job.writing(path):
        export_executorch(net.module, _example_inputs(net, job.cfg), path, metadata=job.props(net.name),
                          max_batch=job.executorch_max_batch)
    return [(path, FP32_TOL)]


FORMAT_EXPORTERS: dict[str, FileExporter] = {"onnx": export_onnx_files, "torchscript": export_torchscript_file,
                                             "aoti": export_aoti_file, "executorch": export_executorch_file}


def reference_outputs(net: Network, cfg: ModelConfig, batch_sizes: Sequence[int],
                      rng: np.random.Generator) -> dict[int, tuple[list[np.ndarray], np.ndarray]]:
    """The eager network's outputs (float64) on fresh random inputs per batch size: the parity references."""
    references = {}
    with torch.inference_mode():
        for b in batch_sizes:
            inputs = random_inputs(net, cfg, b, rng)
            expected = net.module(*(torch.from_numpy(x) for x in inputs)).numpy().astype(np.float64)
            references[b] = (inputs, expected)
    return references


def check_file(path: Path, net: Network, references: dict[int, tuple[list[np.ndarray], np.ndarray]],
               tolerance: float, props: dict[str, str]) -> list[dict[str, Any]]:
    """The gate every exported file passes: onnx.checker and the metadata for ONNX files, then numeric
    parity against the eager outputs. Returns the parity rows; raises LordkitError on any failure."""
    if path.suffix == ".onnx":
        _check_onnx(path, props)
    return check_parity(path, net, references, tolerance)


def export_network(net: Network, formats: Sequence[str], job: ExportJob, batch_sizes: Sequence[int],
                   rng: np.random.Generator, files: dict[str, str]) -> list[dict[str, Any]]:
    """One network in every format, each file checked; returns its parity rows."""
    net.module.eval()
    references = reference_outputs(net, job.cfg, batch_sizes, rng)
    rows: list[dict[str, Any]] = []
    for name in formats:
        for path, tolerance in FORMAT_EXPORTERS[name](net, files, job):
            rows += check_file(path, net, references, tolerance, job.props(net.name))
    return rows


def export_model(model_dir: str | Path, out_dir: str | Path, *, onnx: bool = True, torchscript: bool = True,
                 fp16: bool = False, opset: int = DEFAULT_OPSET, force: bool = False,
                 batch_sizes: Sequence[int] = BATCH_SIZES, show: bool = True,
                 progress: bool | None = None,
                 finish: Callable[[Path], dict[str, Any]] | None = None,
                 onnx_exporter: str = DEFAULT_ONNX_EXPORTER, aoti: bool = False, aoti_device: str | None = None,
                 executorch: bool = False) -> dict[str, Any]:
    """Export a model dir's amortized networks to `out_dir` (written atomically); returns the manifest.

    onnx / torchscript / aoti / executorch choose the formats (aoti_device: "cpu", "cuda", or None =
    CUDA when torch has a GPU); fp16 adds *.fp16.onnx; opset is the ONNX opset (OPSETS);
    onnx_exporter is torch.onnx's "torch.export"-based exporter or its TorchScript-based "legacy" one; force
    replaces an existing `out_dir`; batch_sizes are the parity batch sizes; show prints the parity
    table on the (stderr) console; progress shows a progress bar (default: as show); finish, given
    the complete staged dir before it takes the name, adds files to it (the int8 copies) and returns
    the manifest it leaves. Raises LordkitError, leaving no output behind (or the previous export
    under the name), when any file fails its checks or the disk refuses a write.
    """
    t_start = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    batch_sizes = check_export_options(onnx, torchscript, fp16, opset, batch_sizes, onnx_exporter,
                                       aoti=aoti, executorch=executorch)
    chosen = {"onnx": onnx, "torchscript": torchscript, "aoti": aoti, "executorch": executorch}
    formats = [name for name in FORMATS if chosen[name]]
    aoti_device = check_aoti_device(aoti_device) if aoti else None
    check_out_dir(out_dir, force)  # before the slow part; staged_dir checks existence again

    # Load the model and the class bank; check the data record as the manifest's fields.
    cfg = load_config(model_dir)
    model = load_amortized(model_dir, cfg).eval()
    bank = load_class_bank(model_dir, cfg.model)
    meta = manifest_fields(model_dir, cfg.model, formats=formats, fp16=fp16, opset=opset,
                           onnx_exporter=onnx_exporter, aoti_device=aoti_device)

    rng = np.random.default_rng(PARITY_SEED)
    parity: list[dict[str, Any]] = []
    nets = networks(model)
    with staged_dir(out_dir, force=force, what="export") as tmp, torch.no_grad(), \
            (make_progress(transient=True) if (show if progress is None else progress)
             else contextlib.nullcontext()) as bar:
        job = ExportJob(tmp, out_dir, cfg.model, opset, fp16, json.dumps(meta), onnx_exporter,
                        aoti_device or "cpu", max(8, *batch_sizes))
        task = bar.add_task("export", total=len(nets), unit="net") if bar else None
        with job.writing(tmp / fmt.CLASS_BANK):
            buf = io.BytesIO()
            np.save(buf, bank)
            atomic_write_bytes(tmp / fmt.CLASS_BANK, buf.getvalue())
        for net in nets:
            if bar:
                bar.update(task, description=f"export {net.name}")
            parity += export_network(net, formats, job, batch_sizes, rng, meta["models"][net.name]["files"])
            if bar:
                bar.advance(task)

        # Manifest last: it carries the hash of every other file.
        manifest = dict(meta)
        manifest["sha256"] = {p.name: fmt.sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest["parity"] = parity
        with job.writing(tmp / fmt.MANIFEST):
            atomic_write_json(tmp / fmt.MANIFEST, manifest)
        if finish is not None:
            manifest = finish(tmp)

    if show:
        console.print(parity_table(parity))
        console.print(f"exported {model_dir.name} to {out_dir} in {time.perf_counter() - t_start:.1f} s")
    return manifest
