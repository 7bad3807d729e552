"""The machine a benchmark runs on: CPU model, SIMD flags, cores, library versions, thread settings,
other processes' share of the CPU (/proc/stat), and the measured fp32 matrix-multiply rate."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ORT_CUDA = "CUDAExecutionProvider"
ORT_CPU = "CPUExecutionProvider"
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_tile", "asimd", "sve")  # what decides which kernels onnxruntime and oneDNN pick
CPU_MATMUL_SIZES = (1024, 2048)
CUDA_MATMUL_SIZE = 8192


def has_module(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
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


def _cpuinfo_lines() -> list[str]:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text().splitlines()
    return []


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else what platform knows."""
    for line in _cpuinfo_lines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions of the CPU that matter for the kernels (int8 without VNNI is slower, ...)."""
    for line in _cpuinfo_lines():
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
    phys = core = None
    for line in _cpuinfo_lines() + [""]:
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


def busy_ticks(proc_stat: str) -> int | None:
    """Clock ticks the whole machine has spent busy, from the text of /proc/stat: user, nice, system,
    irq, softirq and steal of the first ("cpu") line; idle and iowait are not busy. None if the text
    has no such line."""
    lines = proc_stat.splitlines()
    fields = lines[0].split() if lines else []
    if not fields or fields[0] != "cpu":
        return None
    try:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in (fields[1:9] + ["0"] * 8)[:8])
    except ValueError:
        return None
    return user + nice + system + irq + softirq + steal


def cpu_times() -> dict[str, float] | None:
    """Seconds of CPU time used so far by the whole machine (busy, from /proc/stat) and by this
    process with its children (os.times), and the wall clock: two readings give the share of the
    machine that *other* processes took in between (others_cpu_share). None off Linux."""
    try:
        ticks = busy_ticks(Path("/proc/stat").read_text())
        tick_s = 1 / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if ticks is None:
        return None
    t = os.times()
    return {"busy_s": ticks * tick_s, "own_s": t.user + t.system + t.children_user + t.children_system,
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
# The matrix-multiply rate: the ceiling each row's GFLOP/s is compared with.


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


def _ort_matmul(n: int, threads: int) -> Callable[[], Any]:
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

    if has_module("onnx"):
        for size in sizes:
            record("onnxruntime-cpu", size, _best_rate(_ort_matmul(size, threads), 2 * size**3, repeats))
    if use_torch if use_torch is not None else has_module("torch"):
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
