"""Inference benchmarks of an export dir: latency and throughput per backend, batch size and network.

`run_benchmark(export_dir, model_dir=None, ...)` times every exported network (content_encoder,
class_encoder, generator, transfer) on every backend asked for and returns one dict: the environment
(CPU, GPU, library versions, threads, load average), the settings, FLOPs per image counted from the
ONNX graphs, the machine's measured fp32 matrix-multiply rate, one row per (network, backend, batch)
and the face-alignment latency. `results_table`, `plot_results` and `write_results` turn it into a
rich table, a PNG and a JSON file. docs/bench.md says what each backend row means.

Measurement (STYLE item 9): every backend gets the same seeded inputs; a few warm-up calls first
(TorchScript profiling runs, cuDNN autotuning, onnxruntime's arenas); the device is synchronised
before every clock read; latencies are per call, reported as p50 / p90 / p99, images/s = batch / p50.
Each row's calls run back to back (steady state). Other processes' share of the CPU over the timed
rows is measured (/proc/stat against this process's own time), and the matmul rate is measured at
the start and at the end: either says when other work disturbed the run.
A time budget per row bounds slow rows (at least MIN_TIMED_ITERS calls are timed), and a row whose
predicted call time is far above the budget (SKIP_FACTOR times) is skipped and says so, so that a
2-core CPU finishes.

Nothing here imports torch at module level: ONNX backends are benchmarked on a torch-free box.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lordkit.errors import LordkitError
from lordkit.export_format import NETWORKS

FORMAT = "lordkit-bench/1"
NETWORK_INPUTS = {"content_encoder": ("image",), "class_encoder": ("image",),
                  "generator": ("content_code", "class_code"), "transfer": ("content_image", "class_image")}

# name -> (what it runs, precision, engine); the order is the table's order.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "eager": ("PyTorch nn.Module from the model dir, fp32 (the baseline)", "fp32", "torch"),
    "torchscript": ("the export's frozen TorchScript .pt, fp32", "fp32", "torch"),
    "compile": ("torch.compile of the eager module, one compile per shape (not timed)", "fp32", "torch"),
    "torch-fp16": ("the eager module cast to float16 (.half())", "fp16", "torch"),
    "torch-bf16": ("the eager module cast to bfloat16", "bf16", "torch"),
    "ort-cpu": ("onnxruntime CPU, plain .onnx", "fp32", "ort"),
    "ort-cpu-opt": ("onnxruntime CPU, .opt.onnx (what lordkit.runtime runs)", "fp32", "ort"),
    "ort-cuda": ("onnxruntime CUDA, .onnx, IO binding with device-resident inputs", "fp32", "ort"),
    "ort-cuda-fp16": ("onnxruntime CUDA, .fp16.onnx, IO binding", "fp16", "ort"),
    "fp16": ("onnxruntime CPU, .fp16.onnx", "fp16", "ort"),
    "int8": ("onnxruntime CPU, .int8.onnx (export.quantize)", "int8", "ort"),
}
DEFAULT_BACKENDS = ("eager", "torchscript", "ort-cpu", "ort-cpu-opt", "ort-cuda", "fp16", "int8", "compile")
CUDA_EXTRA_BACKENDS = ("torch-fp16", "torch-bf16", "ort-cuda-fp16")  # added to the default on a CUDA torch device
FP32_FAST = ("torchscript", "compile", "ort-cpu", "ort-cpu-opt", "ort-cuda")  # candidates for "best fp32"
DEFAULT_BATCH_SIZES = (1, 8, 32, 128)
MIN_TIMED_ITERS = 3  # a row's time budget never cuts it below this many timed calls (or --iters if fewer)
SKIP_FACTOR = 3.0  # a row whose predicted call time exceeds this many times the budget is skipped
ORT_CUDA = "CUDAExecutionProvider"
ORT_CPU = "CPUExecutionProvider"
# The CelebA-like landmark template used to time alignment when the export is not a face model.
DEFAULT_FACE_TEMPLATE = [[0.37, 0.45], [0.63, 0.45], [0.5, 0.6], [0.4, 0.75], [0.6, 0.75]]
FLOP_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Targets of the issue, reported (never asserted): see targets().
TARGET_SPEEDUP_VS_EAGER = 1.5
TARGET_PEAK_FRACTION = 0.8
TARGET_INT8_SPEEDUP = 1.7
TARGET_INT8_PSNR_DB = 30.0


def parse_list(text: str | Sequence[str], known: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of names, each checked against `known`; LordkitError names the bad one."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise LordkitError(f"no {what} given; choose from {', '.join(known)}")
    for item in items:
        if item not in known:
            raise LordkitError(f"unknown {what} {item!r}; choose from {', '.join(known)}")
    return list(dict.fromkeys(items))


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    try:
        sizes = [int(t) for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    except ValueError:
        raise LordkitError(f"batch sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise LordkitError(f"batch sizes must be >= 1, got {text!r}")
    return sorted(set(sizes))


# ----------------------------------------------------------------------------------------------
# The machine.


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_tile", "asimd", "sve")  # what decides which kernels onnxruntime and oneDNN pick


def cpu_flags() -> list[str]:
    """The SIMD extensions of the CPU that matter for the kernels (int8 without VNNI is slower, ...)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in have]
    return []


def physical_cores() -> int:
    """Physical cores this process may use (SMT siblings counted once)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    cores = set()
    with contextlib.suppress(OSError):
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip():
                if core is not None:
                    cores.add((phys, core))
                phys = core = None
    return max(1, min(usable, len(cores) if cores else usable))


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def cpu_times() -> dict[str, float] | None:
    """Seconds of CPU time used so far by the whole machine (busy, from /proc/stat) and by this
    process with its children (os.times), and the wall clock: two readings give the share of the
    machine that *other* processes took in between (others_cpu_share). None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in (fields[1:9] + ["0"] * 8)[:8])
    t = os.times()
    return {"busy_s": (user + nice + system + irq + softirq + steal) / tick,
            "own_s": t.user + t.system + t.children_user + t.children_system,
            "wall_s": time.monotonic(), "cpus": os.cpu_count() or 1}


def others_cpu_share(start: dict[str, float] | None, end: dict[str, float] | None) -> float | None:
    """Fraction of the machine's CPU time (all logical CPUs) that other processes used between two
    cpu_times() readings; steal time (a hypervisor serving other guests) counts as others'."""
    if not start or not end or end["wall_s"] <= start["wall_s"]:
        return None
    others = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return max(0.0, others / ((end["wall_s"] - start["wall_s"]) * start["cpus"]))


def environment(threads: int, torch_device: str | None = None) -> dict[str, Any]:
    """CPU, GPU, library versions and thread settings: what a reader needs to compare two runs."""
    env: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
        "threads": threads, "load_average": load_average(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "lordkit": _version("lordkit"), "numpy": np.__version__, "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
            "onnx": _version("onnx"), "torch": _version("torch"),
            "opencv": _version("opencv-python-headless", "opencv-python"), "dlib": _version("dlib", "dlib-bin"),
        },
        "gpu": None, "torch_device": torch_device,
    }
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    if torch_device and torch_device.startswith("cuda"):
        import torch

        env["gpu"] = torch.cuda.get_device_name(torch.device(torch_device))
        env["versions"]["cuda"] = torch.version.cuda
        env["versions"]["cudnn"] = torch.backends.cudnn.version()
        # PyTorch's defaults: cuDNN convolutions may use TF32 in the "fp32" rows, matmuls do not.
        env["tf32"] = {"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    return env


def set_threads(threads: int) -> None:
    """One thread count for every engine: torch intra-op threads (if torch is loaded) and OpenMP's default."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import sys

    if sys.modules.get("torch") is not None:
        sys.modules["torch"].set_num_threads(threads)


def ort_session_options(threads: int, level: str = "all", spinning: bool = True):
    """onnxruntime options as lordkit.runtime sets them, with the thread count and optimisation level explicit.

    level: "disable", "basic", "extended" or "all" (onnxruntime's default and the runtime's: with it
    the CPU provider fuses Conv+activation and runs convolutions in its blocked NCHWc layout).
    """
    import onnxruntime as ort

    from lordkit.runtime.session import session_options

    opts = session_options(threads)
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


# ----------------------------------------------------------------------------------------------
# FLOPs from the ONNX graph, and the machine's matrix-multiply rate.


def _shape_table(model) -> dict[str, list[int | None]]:
    shapes: dict[str, list[int | None]] = {}
    g = model.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count_flops(model_or_path: Any, batch: int = 1) -> dict[str, Any]:
    """FLOPs of one call at `batch` (2 x multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul).

    Shapes come from onnx.shape_inference with every input's first (batch) axis set to `batch`.
    Bias additions, activations and normalisations are not counted (they are memory-bound and small
    next to the convolutions here). Returns {"flops", "macs", "by_op": {op: flops}, "uncounted": [...]}:
    nodes of those types whose shapes could not be inferred are named in "uncounted".
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else onnx.ModelProto.FromString(
        model_or_path.SerializeToString())
    init_names = {i.name for i in model.graph.initializer}
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name in init_names or not v.type.tensor_type.HasField("shape") or not v.type.tensor_type.shape.dim:
            continue
        dim = v.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.ClearField("dim_param")
            dim.dim_value = int(batch)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shape_table(inferred)

    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in inferred.graph.node:
        if node.op_type not in FLOP_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        macs = None
        if node.op_type in ("Conv", "ConvTranspose"):
            x, w, y = known(node.input[0]), known(node.input[1]), known(node.output[0])
            if x and w and y:
                group = int(attrs.get("group", 1))
                if node.op_type == "Conv":  # w (M, C/group, k...); each output element sums C/group * k... products
                    macs = math.prod(y) * math.prod(w[1:])
                else:  # w (C, M/group, k...); each input element scatters into M/group * k... outputs
                    macs = math.prod(x) * math.prod(w[1:])
                del group  # already folded into w's second axis
        elif node.op_type == "Gemm":
            a, b = known(node.input[0]), known(node.input[1])
            if a and b:
                m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
                n = b[0] if attrs.get("transB", 0) else b[1]
                macs = m * k * n
        else:  # MatMul with numpy broadcasting
            a, b, y = known(node.input[0]), known(node.input[1]), known(node.output[0])
            if a and b and y:
                k = a[-1]
                macs = math.prod(y) * k
        if macs is None:
            uncounted.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    total = sum(by_op.values())
    return {"flops": total, "macs": total // 2, "by_op": by_op, "uncounted": uncounted, "batch": batch}


def _best_rate(fn: Callable[[], Any], flops: float, repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """GFLOP/s of the fastest of `repeats` calls after one warm-up call: a ceiling is what the
    hardware can do, and interference from other processes only ever slows a call down."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return flops / float(min(times)) / 1e9


CPU_MATMUL_SIZES = (1024, 2048)
CUDA_MATMUL_SIZE = 8192


def _ort_matmul(n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), ort_session_options(threads), providers=[ORT_CPU])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
    return lambda: sess.run(None, feeds)


def matmul_rate(threads: int, *, n: int | Sequence[int] | None = None, repeats: int = 10,
                torch_device: str | None = None, use_torch: bool | None = None) -> dict[str, Any]:
    """The machine's measured fp32 matrix-multiply rate in GFLOP/s: the fastest of `repeats` n x n
    products, the best over the sizes n (CPU default: 1024 and 2048; CUDA: 8192).

    Measured with onnxruntime's MatMul (the MLAS kernels of the ONNX rows, same threads) and, when
    torch is installed, torch.mm (MKL / cuBLAS); "peak" is the best of them, the ceiling each row is
    compared with. On a CUDA torch device the fp16 and bf16 rates are measured too.
    """
    sizes = [int(n)] if isinstance(n, (int, np.integer)) else list(n or CPU_MATMUL_SIZES)
    out: dict[str, Any] = {"sizes": sizes, "repeats": repeats, "threads": threads, "gflops": {}, "by_size": {}}

    def record(key: str, size: int, rate: float) -> None:
        out["by_size"].setdefault(key, {})[str(size)] = rate
        out["gflops"][key] = max(out["gflops"].get(key, 0.0), rate)

    if _has("onnx"):
        for size in sizes:
            record("onnxruntime-cpu", size, _best_rate(_ort_matmul(size, threads), 2 * size**3, repeats))
    if use_torch if use_torch is not None else _has("torch"):
        import torch

        torch.set_num_threads(threads)
        dev = torch.device(torch_device or "cpu")
        dtypes = [("fp32", torch.float32)] + ([("fp16", torch.float16), ("bf16", torch.bfloat16)] if dev.type == "cuda" else [])
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        gen = torch.Generator(device=dev).manual_seed(0)
        for size in (sizes if dev.type == "cpu" or n is not None else [CUDA_MATMUL_SIZE]):
            for label, dtype in dtypes:
                a = torch.randn(size, size, device=dev, generator=gen).to(dtype)
                b = torch.randn(size, size, device=dev, generator=gen).to(dtype)
                with torch.inference_mode():
                    rate = _best_rate(lambda: torch.mm(a, b), 2 * size**3, repeats, sync)
                record(f"torch-{dev.type}" + ("" if label == "fp32" else f"-{label}"), size, rate)
                del a, b
    out["peak"] = matmul_peaks(out["gflops"])
    return out


def matmul_peaks(gflops: dict[str, float]) -> dict[str, float | None]:
    """The ceiling per device and precision: the best engine's rate."""
    cpu = [v for k, v in gflops.items() if k in ("onnxruntime-cpu", "torch-cpu")]
    peaks: dict[str, float | None] = {"cpu-fp32": max(cpu) if cpu else None}
    for label in ("", "-fp16", "-bf16"):
        if f"torch-cuda{label}" in gflops:
            peaks[f"cuda-{label[1:] or 'fp32'}"] = gflops[f"torch-cuda{label}"]
    return peaks


def merge_matmul(first: dict[str, Any], again: dict[str, Any]) -> dict[str, Any]:
    """Two measurements of the rate (start and end of a run): the best of each engine is the ceiling,
    since other processes can only slow a measurement down."""
    out = dict(first)
    out["gflops_start"], out["gflops_end"] = first["gflops"], again["gflops"]
    out["gflops"] = {k: max(first["gflops"].get(k, 0.0), again["gflops"].get(k, 0.0))
                     for k in {**first["gflops"], **again["gflops"]}}
    out["peak"] = matmul_peaks(out["gflops"])
    return out


# ----------------------------------------------------------------------------------------------
# Timing.


def percentile_ms(times_s: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times_s, np.float64) * 1e3
    return {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99)),
            "mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}


def time_calls(fn: Callable[[], Any], sync: Callable[[], None], *, warmup: int, iters: int,
               max_time_s: float) -> tuple[list[float], int]:
    """Per-call wall times (s) of `fn` after warm-up, the device synchronised before every clock read.

    Warm-up stops early (after at least one call) once it has used half the time budget; timing
    stops once `max_time_s` is used, after at least MIN_TIMED_ITERS calls (or `iters` if fewer).
    Returns (times, warm-up calls made).
    """
    t_start = time.perf_counter()
    n_warm = 0
    for _ in range(warmup):
        fn()
        sync()
        n_warm += 1
        if time.perf_counter() - t_start > max_time_s / 2:
            break
    times: list[float] = []
    floor = min(iters, MIN_TIMED_ITERS)
    t_timed = time.perf_counter()
    while len(times) < iters:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= floor and time.perf_counter() - t_timed > max_time_s:
            break
    return times, n_warm


# ----------------------------------------------------------------------------------------------
# Inputs and runners.


def make_inputs(network: str, batch: int, img_size: int, channels: int, content_dim: int, class_dim: int,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs as the exporter's parity check draws them: images uniform in [0, 1], codes N(0, 1)."""
    rng = np.random.default_rng([seed, NETWORKS.index(network), batch])
    out = {}
    for name in NETWORK_INPUTS[network]:
        if name.endswith("image"):
            out[name] = rng.random((batch, channels, img_size, img_size), dtype=np.float32)
        else:
            dim = content_dim if name == "content_code" else class_dim
            out[name] = rng.standard_normal((batch, dim), dtype=np.float32)
    return out


class Unavailable(Exception):
    """A backend that cannot run here: the row is reported as missing with this one-line reason."""


@dataclass
class Runner:
    """One opened backend for one network: prepare(inputs) returns the zero-argument call to time for a batch."""

    prepare: Callable[[dict[str, np.ndarray]], Callable[[], Any]]
    sync: Callable[[], None]
    device: str
    file: str | None = None
    open_s: float = 0.0
    compile: bool = False  # torch.compile: the first call of each shape compiles (timed apart)
    info: dict[str, Any] = field(default_factory=dict)


def _ort_runner(path: Path, providers: list, threads: int, *, device: str, io_binding: bool,
                level: str = "all") -> Runner:
    import onnxruntime as ort

    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(path), ort_session_options(threads, level), providers=providers)
    except Exception as e:  # onnxruntime raises its own types (Fail, InvalidGraph, NotImplemented)
        raise Unavailable(f"onnxruntime cannot open {path.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    open_s = time.perf_counter() - t0
    if device == "cuda" and sess.get_providers()[0] != ORT_CUDA:
        raise Unavailable("onnxruntime's CUDA provider did not start (CUDA or cuDNN libraries missing?)")
    out_name = sess.get_outputs()[0].name

    def prepare(inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        if not io_binding:
            return lambda: sess.run([out_name], inputs)
        # Inputs copied to the device once; the output is allocated on the device by onnxruntime and
        # stays there: the time is the network's, not the PCIe link's.
        binding = sess.io_binding()
        kept = []
        for name, arr in inputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0)
            kept.append(value)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(out_name, device, 0)

        def step() -> None:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()
            _ = kept

        return step

    return Runner(prepare, lambda: None, device, path.name, open_s,
                  info={"providers": sess.get_providers(), "io_binding": io_binding, "graph_optimization": level})


def _torch_sync(device) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _torch_runner(module, device_name: str, dtype_name: str = "fp32", *, compile: bool = False,
                  file: str | None = None, open_s: float = 0.0) -> Runner:
    import torch

    device = torch.device(device_name)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    module = module.to(device=device, dtype=dtype).eval() if dtype_name != "fp32" else module.to(device).eval()
    fn = torch.compile(module, dynamic=False) if compile else module

    def prepare(inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        args = [torch.from_numpy(x).to(device=device, dtype=dtype) for x in inputs.values()]

        def step() -> Any:
            with torch.inference_mode():
                return fn(*args)

        return step

    return Runner(prepare, _torch_sync(device), str(device), file, open_s, compile=compile,
                  info={"dtype": dtype_name, "threads": torch.get_num_threads() if device.type == "cpu" else None})


class _Sources:
    """Where each backend's network comes from: the export's files and (optionally) the model dir."""

    def __init__(self, export_dir: Path, manifest: dict[str, Any], model_dir: Path | None, threads: int,
                 torch_device: str, io_binding: bool | None, model_dir_note: str | None):
        self.export_dir, self.manifest, self.model_dir = export_dir, manifest, model_dir
        self.threads, self.torch_device, self.io_binding = threads, torch_device, io_binding
        self.model_dir_note = model_dir_note
        self._eager: dict[str, Any] | None = None

    def file(self, network: str, key: str) -> Path:
        entry = self.manifest.get("models", {}).get(network) or {}
        name = (entry.get("files") or {}).get(key)
        if not name:
            hint = {"onnx_fp16": "re-export with --fp16", "onnx_int8": "quantize it: lordkit export --int8 "
                    "(lordkit.export.quantize.quantize_export)", "torchscript": "re-export with --torchscript",
                    "onnx_opt": "re-export with --onnx", "onnx": "re-export with --onnx"}[key]
            raise Unavailable(f"the export has no {key} file for {network}; {hint}")
        path = self.export_dir / name
        if not path.is_file():
            raise Unavailable(f"{name} is listed in manifest.json but missing")
        return path

    def eager_modules(self) -> dict[str, Any]:
        if self.model_dir is None:
            raise Unavailable(self.model_dir_note or "eager PyTorch needs the model dir (--model-dir); an export "
                              "dir holds no eager module")
        if self._eager is None:
            if not _has("torch"):
                raise Unavailable("torch is not installed")
            from lordkit.modeldir import load_amortized
            from lordkit.models import eager_networks

            self._eager = eager_networks(load_amortized(self.model_dir))
        return self._eager

    def open(self, backend: str, network: str) -> Runner:
        import copy

        ort_cpu = [ORT_CPU]
        if backend in ("eager", "compile", "torch-fp16", "torch-bf16"):
            # torch-fp16 / bf16 run on the CPU too when asked for (slowly: not in the CPU default list).
            module = self.eager_modules()[network]
            if backend != "eager":
                module = copy.deepcopy(module)
            dtype = {"torch-fp16": "fp16", "torch-bf16": "bf16"}.get(backend, "fp32")
            return _torch_runner(module, self.torch_device, dtype, compile=backend == "compile")
        if backend == "torchscript":
            if not _has("torch"):
                raise Unavailable("torch is not installed")
            import warnings

            import torch

            path = self.file(network, "torchscript")
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=self.torch_device)
            return _torch_runner(module, self.torch_device, file=path.name, open_s=time.perf_counter() - t0)
        import onnxruntime as ort

        if backend in ("ort-cuda", "ort-cuda-fp16"):
            if ORT_CUDA not in ort.get_available_providers():
                raise Unavailable("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            key = "onnx" if backend == "ort-cuda" else "onnx_fp16"
            return _ort_runner(self.file(network, key), [(ORT_CUDA, {"device_id": 0}), ORT_CPU], self.threads,
                               device="cuda", io_binding=True if self.io_binding is None else self.io_binding)
        key = {"ort-cpu": "onnx", "ort-cpu-opt": "onnx_opt", "fp16": "onnx_fp16", "int8": "onnx_int8"}[backend]
        return _ort_runner(self.file(network, key), ort_cpu, self.threads, device="cpu",
                           io_binding=bool(self.io_binding))


# ----------------------------------------------------------------------------------------------
# Face alignment.


def find_astronaut() -> Path | None:
    """scikit-image's astronaut.png (a dev dependency), located without importing scikit-image."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("skimage")
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = Path(root) / "data" / "astronaut.png"
            if path.is_file():
                return path
    return None


def bench_alignment(image: str | Path | None, img_size: int, template: Sequence[Sequence[float]] | None = None,
                    *, warmup: int = 2, iters: int = 20, max_time_s: float = 20.0) -> dict[str, Any]:
    """Latency per image of face alignment, the way lordkit.runtime prepares a photo for a face model.

    total: lordkit.runtime.Preparer on the decoded photo (detect, landmarks, similarity fit, warp);
    and the steps apart with lordkit.faces: HOG detection (with the runtime's upsampling rule),
    68-point landmarks, and the warp. Returns {"status": "missing", "reason": ...} when dlib, its
    model files or the image are not there.
    """
    path = Path(image) if image is not None else find_astronaut()
    if path is None:
        return {"status": "missing", "reason": "no image: scikit-image's astronaut.png is not installed; pass --align-image"}
    if not path.is_file():
        return {"status": "missing", "reason": f"image not found: {path}"}
    try:
        import dlib  # noqa: F401

        from lordkit.faces import FaceAligner, alignment_transform, reduce_68_to_5, warp_face
        from lordkit.runtime.align import DETECT_SIDE, EYE_WEIGHT, Preparer
        from lordkit.runtime.images import load_image

        aligner = FaceAligner(landmarks="68", detector="hog")  # dlib's models are cached: Preparer shares them
    except ImportError as e:
        return {"status": "missing", "reason": f"{e.name or 'dlib'} is not installed"}
    except LordkitError as e:
        return {"status": "missing", "reason": str(e)}
    template = np.asarray(template if template is not None else DEFAULT_FACE_TEMPLATE, np.float64)
    photo = load_image(path, 3).pixels
    preparer = Preparer(img_size, 3, template, "eyes_nose_mouth")
    h, w = photo.shape[:2]
    side = min(max(h, w), DETECT_SIDE)
    upsample = 0 if side >= 800 else 1 if side >= 300 else 2  # lordkit.runtime.align's rule for small photos
    faces = aligner.detect(photo, upsample=upsample, max_side=DETECT_SIDE)
    if not faces:
        return {"status": "missing", "reason": f"no face found in {path.name}"}
    face = faces[0]
    points = aligner.landmark_points(photo, face)
    m = alignment_transform(reduce_68_to_5(points), template, img_size, [EYE_WEIGHT] * 2 + [1.0] * 3)
    steps = {
        "total": lambda: preparer(photo),
        "detect": lambda: aligner.detect(photo, upsample=upsample, max_side=DETECT_SIDE),
        "landmarks": lambda: aligner.landmark_points(photo, face),
        "warp": lambda: warp_face(photo, m, img_size),
    }
    out: dict[str, Any] = {"status": "ok", "image": path.name, "image_size": [w, h], "crop_size": img_size,
                           "n_faces": len(faces), "face_px": round(face.width), "detect_upsample": upsample,
                           "detector": "hog", "landmarks": "68", "latency_ms": {}}
    for name, fn in steps.items():
        times, _ = time_calls(fn, lambda: None, warmup=warmup, iters=iters, max_time_s=max_time_s)
        out["latency_ms"][name] = percentile_ms(times)
        out.setdefault("n_iters", {})[name] = len(times)
    out["img_per_sec"] = 1e3 / out["latency_ms"]["total"]["p50"]
    return out


# ----------------------------------------------------------------------------------------------
# The benchmark.


def default_backends(torch_device: str) -> list[str]:
    return list(DEFAULT_BACKENDS) + (list(CUDA_EXTRA_BACKENDS) if torch_device.startswith("cuda") else [])


def resolve_torch_device(device: str) -> str:
    """"auto": cuda when torch sees a GPU, else cpu (also when torch is missing)."""
    name = (device or "auto").strip().lower()
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise LordkitError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if name == "cpu":
        return "cpu"
    has_cuda = False
    if _has("torch"):
        import torch

        has_cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise LordkitError(f"--device {device} asked for, but torch sees no CUDA GPU")
    return name


def check_model_dir(model_dir: Path, export_dir: Path, manifest: dict[str, Any], threads: int) -> str | None:
    """None when the model dir's eager networks give the export's outputs, else why not (one line).

    Compares the content encoder and generator (eager vs the export's .onnx, batch 1, seeded
    inputs) so that eager rows never time a different model from the exported one.
    """
    if not (model_dir / "config.json").is_file():
        return f"{model_dir} is not a model dir (no config.json)"
    try:
        import onnxruntime as ort
        import torch

        from lordkit.modeldir import load_amortized, load_config
        from lordkit.models import code_generator

        mc = load_config(model_dir).model
        if (mc.img_size, mc.channels, mc.content_dim, mc.class_dim) != (
                manifest["img_size"], manifest["channels"], manifest["content_dim"], manifest["class_dim"]):
            return f"{model_dir} is a {mc.img_size} px, {mc.content_dim}/{mc.class_dim}-dim model; the export is not"
        m = load_amortized(model_dir).eval()
        modules = {"content_encoder": m.content_encoder, "generator": code_generator(m)}
        for network, module in modules.items():
            name = manifest["models"][network]["files"].get("onnx")
            if not name:
                continue
            feeds = make_inputs(network, 1, manifest["img_size"], manifest["channels"], manifest["content_dim"],
                                manifest["class_dim"], seed=99)
            sess = ort.InferenceSession(str(export_dir / name), ort_session_options(threads), providers=[ORT_CPU])
            got = sess.run(None, feeds)[0]
            with torch.inference_mode():
                want = module(*(torch.from_numpy(x) for x in feeds.values())).numpy()
            err = float(np.max(np.abs(got - want)))
            if not err < 1e-3:
                return (f"model dir {model_dir} does not match the export ({network}: max abs error {err:.2g}); "
                        "eager rows need the model the export was made from")
    except LordkitError as e:
        return str(e)
    return None


def _fmt_reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def run_benchmark(export_dir: str | Path, model_dir: str | Path | None = None, *,
                  batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, backends: Sequence[str] | None = None,
                  networks: Sequence[str] = NETWORKS, threads: int | None = None, warmup: int = 3, iters: int = 20,
                  max_time_s: float = 20.0, device: str = "auto", align: bool = True,
                  align_image: str | Path | None = None, io_binding: bool | None = None, seed: int = 0,
                  model_info: dict[str, Any] | None = None, matmul_n: int | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark an export dir; returns the result dict (see the module docstring and docs/bench.md).

    export_dir: a lordkit export (manifest.json + files). model_dir: the model dir it came from, for
    the eager and torch.compile rows (without it they are reported missing); it is checked to give
    the export's outputs. backends: names of BACKENDS (None: DEFAULT_BACKENDS, plus the half-precision
    torch rows on a CUDA device). threads: intra-op threads of every engine (None: physical cores).
    max_time_s: time budget per row (warm-up gets half of it; see time_calls). device: torch's device
    for the torch rows (auto, cpu, cuda, cuda:N). align: also time face alignment on align_image
    (default: scikit-image's astronaut.png). io_binding: ONNX rows through IOBinding (None: on CUDA only).
    matmul_n: side of the square matrices of the matmul-rate measurement, made at the start and at the
    end of the run, the better one kept (None: the best of 1024 and 2048 on CPU, 8192 on CUDA).
    """
    from lordkit.fsutil import read_json
    from lordkit.runtime.bundle import Bundle

    export_dir = Path(export_dir)
    bundle = Bundle(export_dir, verify="none")  # format, required keys, files present, ONNX metadata
    manifest = read_json(export_dir / "manifest.json", "export manifest")
    batch_sizes = parse_batch_sizes(batch_sizes)
    networks = parse_list(networks, NETWORKS, "network")
    torch_device = resolve_torch_device(device)
    backends = parse_list(backends if backends is not None else default_backends(torch_device), list(BACKENDS),
                          "backend")
    threads = int(threads) if threads else physical_cores()
    if threads < 1:
        raise LordkitError(f"threads must be >= 1, got {threads}")
    if warmup < 0 or iters < 1 or max_time_s <= 0:
        raise LordkitError(f"need --warmup >= 0, --iters >= 1 and --max-time > 0; got {warmup}, {iters}, {max_time_s}")
    log = log or (lambda message: None)
    set_threads(threads)
    needs_torch = any(BACKENDS[b][2] == "torch" for b in backends)
    if needs_torch and _has("torch"):
        import torch

        torch.set_num_threads(threads)
        if torch_device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # autotuned per shape during warm-up

    dims = dict(img_size=bundle.img_size, channels=bundle.channels, content_dim=bundle.content_dim,
                class_dim=bundle.class_dim)
    model_dir_path = Path(model_dir) if model_dir is not None else None
    note = None
    if model_dir_path is not None and any(b in ("eager", "compile", "torch-fp16", "torch-bf16") for b in backends):
        if not _has("torch"):
            note = "torch is not installed"
        else:
            note = check_model_dir(model_dir_path, export_dir, manifest, threads)
        if note:
            log(f"warning: {note}; eager rows are reported missing")
            model_dir_path = None

    result: dict[str, Any] = {
        "format": FORMAT, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "env": environment(threads, torch_device if needs_torch else None),
        "settings": {"batch_sizes": batch_sizes, "backends": backends, "networks": networks, "threads": threads,
                     "warmup": warmup, "iters": iters, "max_time_s": max_time_s, "min_timed_iters": MIN_TIMED_ITERS,
                     "torch_device": torch_device, "seed": seed, "ort_graph_optimization": "all",
                     "io_binding": io_binding},
        "model": {"export_dir": str(export_dir), "model_dir": str(model_dir) if model_dir is not None else None,
                  "model_name": manifest.get("model_name"), **dims, **(model_info or {})},
        "backends": {b: BACKENDS[b][0] for b in backends},
    }

    # FLOPs per image from the plain ONNX graphs (counted at batch 1 and 2: the per-image count must agree).
    flops: dict[str, Any] = {}
    for network in networks:
        name = (manifest["models"].get(network, {}).get("files") or {}).get("onnx")
        if not name or not _has("onnx"):
            flops[network] = None
            continue
        c1, c2 = count_flops(export_dir / name, 1), count_flops(export_dir / name, 2)
        flops[network] = {"per_image": c2["flops"] / 2, "by_op_per_image": {k: v / 2 for k, v in c2["by_op"].items()},
                          "batch1": c1["flops"], "uncounted": c2["uncounted"]}
    result["flops"] = flops

    log("measuring the matrix-multiply rate")
    result["matmul"] = matmul_rate(threads, n=matmul_n, torch_device=torch_device if needs_torch else None,
                                   use_torch=_has("torch") and (needs_torch or torch_device == "cpu"))
    result["env"]["load_average_start"] = load_average()
    times_start = cpu_times()

    sources = _Sources(export_dir, manifest, model_dir_path, threads, torch_device, io_binding, note)
    rows: list[dict[str, Any]] = []
    total = len(networks) * len(backends) * len(batch_sizes)
    bar_cm = _progress(total) if progress else contextlib.nullcontext((None, None))
    with bar_cm as (bar, task):

        def advance(what: str) -> None:
            if bar is not None:
                bar.update(task, advance=1, description=what)

        for network in networks:
            feeds = {b: make_inputs(network, b, **dims, seed=seed) for b in batch_sizes}
            for backend in backends:
                rows += _bench_backend(sources, network, backend, batch_sizes, feeds, flops.get(network), warmup,
                                       iters, max_time_s, advance)
    result["env"]["load_average_end"] = load_average()
    result["env"]["others_cpu_share"] = others_cpu_share(times_start, cpu_times())
    log("measuring the matrix-multiply rate again")
    result["matmul"] = merge_matmul(result["matmul"], matmul_rate(
        threads, n=matmul_n, torch_device=torch_device if needs_torch else None,
        use_torch=_has("torch") and (needs_torch or torch_device == "cpu")))
    _add_speedups(rows)
    _add_peak_fractions(rows, result["matmul"]["peak"])
    result["rows"] = rows
    if align:
        log("timing face alignment")
        template = manifest.get("face_template") or DEFAULT_FACE_TEMPLATE
        result["alignment"] = bench_alignment(align_image, bundle.img_size, template, warmup=min(warmup, 2),
                                              iters=iters, max_time_s=max_time_s)
        result["alignment"]["template"] = "export" if manifest.get("face_template") else "default (CelebA-like)"
    result["quality"] = manifest.get("quality") or []
    result["targets"] = targets(result)
    return result


@contextlib.contextmanager
def _progress(total: int) -> Iterator[tuple[Any, Any]]:
    from lordkit.console import make_progress

    with make_progress(transient=True) as bar:
        task = bar.add_task("bench", total=total, unit="row")
        yield bar, task


def _row(network: str, backend: str, batch: int, **kw: Any) -> dict[str, Any]:
    return {"network": network, "backend": backend, "precision": BACKENDS[backend][1], "batch": batch, **kw}


def _bench_backend(sources: _Sources, network: str, backend: str, batch_sizes: Sequence[int],
                   feeds: dict[int, dict[str, np.ndarray]], flops: dict[str, Any] | None,
                   warmup: int, iters: int, max_time_s: float, advance: Callable[[str], None]) -> list[dict[str, Any]]:
    """One backend of one network at every batch size, timed back to back (steady state: warm caches,
    the engine's threads awake). Interleaving backends call by call was tried and rejected: each
    call then starts cold after another engine's (eager PyTorch 2x slower at batch 1 here)."""
    rows = []
    try:
        runner = sources.open(backend, network)
    except Exception as e:  # Unavailable, or a backend that fails to load: a row, not a crashed benchmark
        status = "missing" if isinstance(e, Unavailable) else "error"
        for b in batch_sizes:
            rows.append(_row(network, backend, b, status=status, reason=str(e) if status == "missing" else _fmt_reason(e)))
            advance(f"{network} {backend}")
        return rows
    base = dict(device=runner.device, file=runner.file, **runner.info)
    per_img_s, measured_at = None, None  # seconds per image at the last batch size that was timed
    for b in batch_sizes:
        advance(f"{network} {backend} B={b}")
        if per_img_s is not None and per_img_s * b > SKIP_FACTOR * max_time_s:
            rows.append(_row(network, backend, b, status="skipped", **base,
                             reason=f"predicted {per_img_s * b:.0f} s per call from batch {measured_at}, "
                                    f"above {SKIP_FACTOR:g} x --max-time {max_time_s:g} s"))
            continue
        try:
            step = runner.prepare(feeds[b])
            compile_s = None
            if runner.compile:  # the first call of a shape compiles: timed apart, never in the latency
                t0 = time.perf_counter()
                step()
                runner.sync()
                compile_s = time.perf_counter() - t0
            times, n_warm = time_calls(step, runner.sync, warmup=warmup, iters=iters, max_time_s=max_time_s)
        except Exception as e:  # out of memory, a provider failure, a compile error: report and go on
            rows.append(_row(network, backend, b, status="error", reason=_fmt_reason(e), **base))
            continue
        lat = percentile_ms(times)
        row = _row(network, backend, b, status="ok", **base, latency_ms=lat, n_iters=len(times), n_warmup=n_warm,
                   img_per_sec=b / (lat["p50"] / 1e3), open_s=runner.open_s)
        if compile_s is not None:
            row["compile_s"] = compile_s
        if flops:
            row["gflop_per_img"] = flops["per_image"] / 1e9
            row["gflops"] = flops["per_image"] * b / (lat["p50"] / 1e3) / 1e9
        per_img_s, measured_at = lat["p50"] / 1e3 / b, b
        rows.append(row)
    return rows


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    eager = {(r["network"], r["batch"]): r["img_per_sec"] for r in rows if r["backend"] == "eager" and r["status"] == "ok"}
    for r in rows:
        base = eager.get((r["network"], r["batch"]))
        if r["status"] == "ok" and base:
            r["speedup_vs_eager"] = r["img_per_sec"] / base


def _add_peak_fractions(rows: list[dict[str, Any]], peaks: dict[str, Any]) -> None:
    """Achieved GFLOP/s over the matmul rate of the row's device (and, on CUDA, precision)."""
    for r in rows:
        if r["status"] != "ok" or "gflops" not in r:
            continue
        cuda = str(r.get("device", "")).startswith("cuda")
        key = ("cuda-" + (r["precision"] if r["precision"] in ("fp16", "bf16") else "fp32")) if cuda else "cpu-fp32"
        if peaks.get(key):
            r["peak_fraction"], r["peak"] = r["gflops"] / peaks[key], key


def _ok(rows: list[dict[str, Any]], network: str, batch: int, backend: str) -> dict[str, Any] | None:
    return next((r for r in rows if (r["network"], r["batch"], r["backend"], r["status"]) ==
                 (network, batch, backend, "ok")), None)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, measured (reported, never asserted): per network at batch 8 and 32 on the CPU,
    the best fp32 backend against eager and against the matmul rate, and int8 against fp32 onnxruntime."""
    rows = [r for r in result.get("rows") or [] if r.get("device") == "cpu"]  # the targets are the CPU's
    out: dict[str, Any] = {"speedup_vs_eager": [], "peak_fraction": [], "int8": [],
                           "limits": {"speedup_vs_eager": TARGET_SPEEDUP_VS_EAGER, "peak_fraction": TARGET_PEAK_FRACTION,
                                      "int8_speedup": TARGET_INT8_SPEEDUP, "int8_psnr_db": TARGET_INT8_PSNR_DB}}
    psnr = {q["model"]: q.get("psnr_db") for q in result.get("quality") or []}
    for network in result["settings"]["networks"]:
        for batch in (8, 32):
            fast = [r for b in FP32_FAST if (r := _ok(rows, network, batch, b))]
            best = max(fast, key=lambda r: r["img_per_sec"], default=None)
            eager = _ok(rows, network, batch, "eager")
            if best and eager:
                ratio = best["img_per_sec"] / eager["img_per_sec"]
                out["speedup_vs_eager"].append({"network": network, "batch": batch, "best": best["backend"],
                                                "img_per_sec": best["img_per_sec"], "eager_img_per_sec": eager["img_per_sec"],
                                                "ratio": ratio, "met": ratio >= TARGET_SPEEDUP_VS_EAGER})
            if best and best.get("peak_fraction") is not None:
                out["peak_fraction"].append({"network": network, "batch": batch, "best": best["backend"],
                                             "gflops": best["gflops"], "fraction": best["peak_fraction"],
                                             "met": best["peak_fraction"] >= TARGET_PEAK_FRACTION})
            int8 = _ok(rows, network, batch, "int8")
            ort32 = max((r for b in ("ort-cpu", "ort-cpu-opt") if (r := _ok(rows, network, batch, b))),
                        key=lambda r: r["img_per_sec"], default=None)
            if int8 and ort32:
                ratio = int8["img_per_sec"] / ort32["img_per_sec"]
                p = psnr.get(network)
                out["int8"].append({"network": network, "batch": batch, "vs": ort32["backend"], "ratio": ratio,
                                    "psnr_db": p, "met": ratio >= TARGET_INT8_SPEEDUP and (p is None or p >= TARGET_INT8_PSNR_DB)})
    return out


# ----------------------------------------------------------------------------------------------
# Output: table, JSON, PNG.


def results_table(result: dict[str, Any]):
    """One line per (network, backend, batch): latency percentiles, images/s, speed-up, GFLOP/s, % of
    matmul; notes (why a row is missing, compile times, alignment steps) as numbered lines under the
    table, so that the numbers fit an 80-column terminal. A rich renderable."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    env, mm = result["env"], result["matmul"]
    peak = mm["peak"].get("cpu-fp32")
    title = (f"lordkit bench: {result['model'].get('model_name') or 'model'} {result['model']['img_size']} px, "
             f"{env['threads']} threads, {env['cpu']}"
             + (f", {env['gpu']}" if env.get("gpu") else "")
             + (f"; fp32 matmul {peak:.0f} GFLOP/s" if peak else "") + _load_text(env))
    networks = list(dict.fromkeys(r["network"] for r in result["rows"]))
    one = len(networks) == 1  # one network: named in the title, so the table fits 80 columns
    if one:
        title += f"; network: {networks[0]}"
    # Light rules and single spaces between columns: the numbers keep their full width in 80 columns.
    t = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    t.caption = "p50 / p90 / p99: latency per call in ms; img/s = B / p50"
    for name, justify in (("network", "left"), ("backend", "left"), ("B", "right"), ("p50", "right"),
                          ("p90", "right"), ("p99", "right"), ("img/s", "right"), ("x eager", "right"),
                          ("GFLOP/s", "right"), ("% matmul", "right"), ("note", "left")):
        if not (one and name == "network"):
            t.add_column(name, justify=justify, no_wrap=True, min_width=None if name == "network" else len(name))

    notes: list[str] = []

    def add_row(*cells: str) -> None:
        *cells_, note = cells
        if note:
            notes.append(note)
            note = f"[{len(notes)}]"
        if one:
            first, backend, *rest = cells_
            cells_ = [first if first == "face align" else backend, *rest]
        t.add_row(*cells_, note)

    last = None
    shown: set[tuple[str, str]] = set()
    for r in result["rows"]:
        if last is not None and r["network"] != last:
            t.add_section()
        last = r["network"]
        if r["status"] != "ok":
            same = [q for q in result["rows"] if (q["network"], q["backend"]) == (r["network"], r["backend"])]
            if all((q["status"], q.get("reason")) == (r["status"], r.get("reason")) for q in same):
                if (r["network"], r["backend"]) in shown:
                    continue  # one line for a backend that is missing at every batch size
                shown.add((r["network"], r["backend"]))
                batch = "all"
            else:
                batch = str(r["batch"])
            add_row(r["network"], r["backend"], batch, *[""] * 7, f"{r['status']}: {r.get('reason', '')}")
            continue
        lat = r["latency_ms"]
        note = f"compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
        add_row(r["network"], r["backend"], str(r["batch"]), _num(lat["p50"]), _num(lat["p90"]), _num(lat["p99"]),
                _num(r["img_per_sec"]), f"{r['speedup_vs_eager']:.2f}" if "speedup_vs_eager" in r else "",
                _num(r["gflops"]) if "gflops" in r else "",
                f"{100 * r['peak_fraction']:.0f}%" if "peak_fraction" in r else "", note)
    a = result.get("alignment")
    if a:
        t.add_section()
        if a["status"] == "ok":
            lat = a["latency_ms"]
            add_row("face align", "dlib", "1", _num(lat["total"]["p50"]), _num(lat["total"]["p90"]),
                    _num(lat["total"]["p99"]), _num(a["img_per_sec"]), "", "", "",
                    f"dlib + OpenCV: detect {lat['detect']['p50']:.1f}, landmarks {lat['landmarks']['p50']:.2f}, "
                    f"warp {lat['warp']['p50']:.2f} ms ({a['image']}, upsample {a['detect_upsample']})")
        else:
            add_row("face align", "", "", *[""] * 7, f"missing: {a['reason']}")
    if not notes:
        return t
    return Group(t, Text("\n".join(f"[{i}] {note}" for i, note in enumerate(notes, 1)), style="dim"))


def _load_text(env: dict[str, Any]) -> str:
    share = env.get("others_cpu_share")
    if share is not None:
        return f", other processes {100 * share:.0f}% CPU"
    loads = [x[0] for x in (env.get("load_average_start"), env.get("load_average_end")) if x]
    return f", load average {' -> '.join(f'{x:.1f}' for x in loads)}" if loads else ""


def load_warning(result: dict[str, Any]) -> str | None:
    """A line when other processes took CPU time while the rows were timed (the timings are then
    disturbed): more than a quarter of the machine's CPU time by others (from /proc/stat; load
    averages cannot tell this run's own earlier work from others'), or a matmul rate that fell
    between the start and the end of the run."""
    env, mm = result["env"], result.get("matmul") or {}
    share = env.get("others_cpu_share")
    first, last = (mm.get("gflops_start") or {}), (mm.get("gflops_end") or {})
    drops = [last[k] / v for k, v in first.items() if v and last.get(k)]
    fell = drops and min(drops) < 0.85
    if (share is not None and share > 0.25) or fell:
        parts = []
        if share is not None:
            parts.append(f"other processes used {100 * share:.0f}% of the machine's CPU time while the rows were timed")
        if fell:
            parts.append(f"the matmul rate was {100 * (1 - min(drops)):.0f}% lower at the end than at the start")
        return ("; ".join(parts) + ": these timings are pessimistic and noisy (multi-threaded PyTorch most of all)")
    return None


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def targets_lines(result: dict[str, Any]) -> list[str]:
    """The targets as short lines of text (for the console)."""
    t = result["targets"]
    lim = t["limits"]
    lines = []
    for r in t["speedup_vs_eager"]:
        lines.append(f"{r['network']} B={r['batch']}: best fp32 {r['best']} {r['ratio']:.2f}x eager "
                     f"(target {lim['speedup_vs_eager']}x) {'met' if r['met'] else 'NOT met'}")
    for r in t["peak_fraction"]:
        lines.append(f"{r['network']} B={r['batch']}: {r['best']} {r['gflops']:.1f} GFLOP/s = {100 * r['fraction']:.0f}% "
                     f"of the matmul rate (target {100 * lim['peak_fraction']:.0f}%) {'met' if r['met'] else 'NOT met'}")
    for r in t["int8"]:
        p = f", PSNR {r['psnr_db']:.1f} dB" if r["psnr_db"] is not None else ""
        lines.append(f"{r['network']} B={r['batch']}: int8 {r['ratio']:.2f}x {r['vs']}{p} (target "
                     f"{lim['int8_speedup']}x, {lim['int8_psnr_db']:.0f} dB) {'met' if r['met'] else 'NOT met'}")
    return lines


# Plot colours (BGR for OpenCV), one per backend, distinguishable in print.
_COLOURS = {
    "eager": (40, 40, 40), "torchscript": (180, 119, 31), "compile": (194, 119, 227), "torch-fp16": (127, 127, 127),
    "torch-bf16": (34, 189, 188), "ort-cpu": (14, 127, 255), "ort-cpu-opt": (44, 160, 44), "ort-cuda": (40, 39, 214),
    "ort-cuda-fp16": (75, 86, 140), "fp16": (207, 190, 23), "int8": (189, 103, 148),
}


def _nice_ticks(lo: float, hi: float, log: bool, n: int = 5) -> list[float]:
    if log:
        ticks = []
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            for m in (1, 2, 5):
                v = m * 10.0**e
                if lo <= v <= hi:
                    ticks.append(v)
        return ticks if len(ticks) >= 2 else [lo, hi]
    step = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(step)) if step > 0 else 1
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= step)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _tick_label(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    if v >= 1:
        return f"{v:g}"
    return f"{v:.2g}"


def _put(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, colour=(0, 0, 0), thick: int = 1,
         anchor: str = "left") -> None:
    import cv2

    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = org
    if anchor == "center":
        x -= w // 2
    elif anchor == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def _panel(img: np.ndarray, box: tuple[int, int, int, int], series: dict[str, list[tuple[int, float]]],
           batch_sizes: Sequence[int], title: str, ylabel: str, log_y: bool) -> None:
    """One chart: batch size on a log2 x axis, `series` as lines with markers."""
    import cv2

    x0, y0, w, h = box
    left, right, top, bottom = 62, 14, 26, 40
    px0, py0, pw, ph = x0 + left, y0 + top, w - left - right, h - top - bottom
    cv2.rectangle(img, (px0, py0), (px0 + pw, py0 + ph), (0, 0, 0), 1)
    _put(img, title, (x0 + left + pw // 2, y0 + 17), 0.5, thick=1, anchor="center")
    values = [v for pts in series.values() for _, v in pts if v > 0]
    if not values:
        _put(img, "no measurements", (px0 + pw // 2, py0 + ph // 2), anchor="center", colour=(120, 120, 120))
        return
    lo, hi = min(values), max(values)
    if log_y:
        lo, hi = lo / 1.3, hi * 1.3
        if hi / lo < 10:
            mid = math.sqrt(lo * hi)
            lo, hi = mid / 3.2, mid * 3.2
    else:
        lo, hi = 0.0, hi * 1.1

    def fy(v: float) -> int:
        if log_y:
            return int(py0 + ph - (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) * ph)
        return int(py0 + ph - (v - lo) / (hi - lo) * ph)

    bs = sorted(batch_sizes)
    bmin, bmax = bs[0], bs[-1]
    span = math.log2(bmax) - math.log2(bmin) if bmax > bmin else 1.0

    def fx(b: int) -> int:
        frac = (math.log2(b) - math.log2(bmin)) / span if bmax > bmin else 0.5
        return int(px0 + 12 + frac * (pw - 24))

    for v in _nice_ticks(lo, hi, log_y):
        y = fy(v)
        cv2.line(img, (px0, y), (px0 + pw, y), (225, 225, 225), 1)
        cv2.line(img, (px0 - 4, y), (px0, y), (0, 0, 0), 1)
        _put(img, _tick_label(v), (px0 - 7, y + 4), 0.4, anchor="right")
    for b in bs:
        x = fx(b)
        cv2.line(img, (x, py0 + ph), (x, py0 + ph + 4), (0, 0, 0), 1)
        _put(img, str(b), (x, py0 + ph + 17), 0.4, anchor="center")
    _put(img, "batch size (log scale)", (px0 + pw // 2, py0 + ph + 33), 0.42, anchor="center")
    label = np.full((18, ph), 255, np.uint8)
    label = np.dstack([label] * 3)
    _put(label, ylabel, (ph // 2, 13), 0.42, anchor="center")
    img[py0:py0 + ph, x0 + 4:x0 + 22] = np.rot90(label)[:ph, :18]
    for backend, pts in series.items():
        colour = _COLOURS.get(backend, (0, 0, 0))
        pts = [(fx(b), fy(v)) for b, v in sorted(pts) if v > 0]
        for p, q in zip(pts[:-1], pts[1:]):
            cv2.line(img, p, q, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 4, colour, -1, cv2.LINE_AA)


def plot_results(result: dict[str, Any]) -> np.ndarray:
    """The latency (log) and throughput charts per network against batch size, one line per backend; RGB uint8."""
    import cv2

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    networks = [n for n in result["settings"]["networks"] if any(r["network"] == n for r in rows)] or \
        list(result["settings"]["networks"])
    backends = [b for b in result["settings"]["backends"] if any(r["backend"] == b for r in rows)]
    batch_sizes = result["settings"]["batch_sizes"]
    pw, ph, header = 560, 330, 86
    legend_rows = math.ceil(len(backends) / 6) if backends else 1
    header += 22 * (legend_rows - 1)
    img = np.full((header + ph * len(networks) + 10, 2 * pw + 20, 3), 255, np.uint8)
    env, m = result["env"], result["model"]
    title = (f"lordkit bench: {m.get('model_name') or 'model'}, {m['img_size']} px, {env['threads']} threads, "
             f"{env['cpu']}" + (f", {env['gpu']}" if env.get("gpu") else "") + _load_text(env))
    _put(img, title, (14, 26), 0.6, thick=1)
    for i, backend in enumerate(backends):
        x = 14 + (i % 6) * 190
        y = 56 + 22 * (i // 6)
        cv2.line(img, (x, y - 5), (x + 28, y - 5), _COLOURS.get(backend, (0, 0, 0)), 3, cv2.LINE_AA)
        cv2.circle(img, (x + 14, y - 5), 4, _COLOURS.get(backend, (0, 0, 0)), -1, cv2.LINE_AA)
        _put(img, backend, (x + 36, y), 0.5)
    for k, network in enumerate(networks):
        lat = {b: [(r["batch"], r["latency_ms"]["p50"]) for r in rows if r["network"] == network and r["backend"] == b]
               for b in backends}
        thr = {b: [(r["batch"], r["img_per_sec"]) for r in rows if r["network"] == network and r["backend"] == b]
               for b in backends}
        y = header + k * ph
        _panel(img, (10, y, pw, ph), {b: v for b, v in lat.items() if v}, batch_sizes,
               f"{network}: latency p50 (ms, log scale)", "ms per call", True)
        _panel(img, (10 + pw, y, pw, ph), {b: v for b, v in thr.items() if v}, batch_sizes,
               f"{network}: throughput (images/s, log scale)", "images/s", True)
    return img[..., ::-1].copy()  # BGR drawing -> RGB


def write_results(result: dict[str, Any], out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """`<stem>.json` (the whole result) and `<stem>.png` (the plot) in out_dir, written atomically."""
    from lordkit.fsutil import atomic_write_text
    from lordkit.viz import save_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    atomic_write_text(json_path, json.dumps(result, indent=2, default=_json_default) + "\n")
    save_png(png_path, plot_results(result))
    return json_path, png_path


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------------------------
# onnxruntime settings, one at a time: what each is worth (docs/bench.md).


def ort_settings_sweep(path: str | Path, inputs: dict[str, np.ndarray], threads: int, *, warmup: int = 2,
                       iters: int = 10, max_time_s: float = 20.0) -> list[dict[str, Any]]:
    """Latency of one ONNX file under onnxruntime CPU settings, changed one at a time from the default
    (optimisation level all, `threads` intra-op threads, spinning on)."""
    path = Path(path)
    settings = [("default (all, spinning)", dict(level="all")), ("optimisation: disable", dict(level="disable")),
                ("optimisation: basic", dict(level="basic")), ("optimisation: extended", dict(level="extended")),
                ("no spinning", dict(level="all", spinning=False))]
    settings += [(f"{n} thread{'s' if n > 1 else ''}", dict(level="all", threads=n)) for n in range(1, threads)]
    rows = []
    import onnxruntime as ort

    for label, kw in settings:
        n = kw.pop("threads", threads)
        sess = ort.InferenceSession(str(path), ort_session_options(n, **kw), providers=[ORT_CPU])
        out = sess.get_outputs()[0].name
        times, _ = time_calls(lambda: sess.run([out], inputs), lambda: None, warmup=warmup, iters=iters,
                              max_time_s=max_time_s)
        lat = percentile_ms(times)
        batch = next(iter(inputs.values())).shape[0]
        rows.append({"setting": label, "threads": n, "latency_ms": lat, "img_per_sec": batch / (lat["p50"] / 1e3)})
    return rows
