"""The benchmark of one export: every network on every backend at every batch size, timed back to
back, with the machine's probe, FLOPs, the matmul rate at the start and the end, other processes'
CPU share and face alignment; returns the result dict."""

from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lordkit.export_format import NETWORKS

from .align import DEFAULT_FACE_TEMPLATE, bench_alignment
from .flops import count_flops
from .machine import (cpu_times, environment, has_module, load_average, matmul_rate, merge_matmul,
                      others_cpu_share, physical_cores, set_threads)
from .options import (BACKENDS, DEFAULT_BATCH_SIZES, check_settings, default_backends, parse_batch_sizes, parse_list,
                      resolve_torch_device)
from .runners import TORCH_BACKENDS, Sources, Unavailable, check_model_dir, make_inputs
from .timing import MIN_TIMED_ITERS, percentile_ms, time_calls

FORMAT = "lordkit-bench/2"  # /2: no "targets" key (a /1 file has one); every other key as in /1
SKIP_FACTOR = 3.0  # a row whose predicted call time exceeds this many times the budget is skipped


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
    """Benchmark an export dir; returns the result dict (see lordkit.bench's docstring and docs/bench.md).

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
    from lordkit.runtime.bundle import Bundle

    export_dir = Path(export_dir)
    bundle = Bundle(export_dir, verify="none")  # format, required keys, files present, ONNX metadata
    manifest = bundle.manifest
    batch_sizes = parse_batch_sizes(batch_sizes)
    networks = parse_list(networks, NETWORKS, "network")
    torch_device = resolve_torch_device(device)
    backends = parse_list(backends if backends is not None else default_backends(torch_device), list(BACKENDS),
                          "backend")
    check_settings(threads, warmup, iters, max_time_s, matmul_n)
    threads = int(threads) if threads else physical_cores()
    log = log or (lambda message: None)
    set_threads(threads)
    needs_torch = any(BACKENDS[b][2] == "torch" for b in backends)
    if needs_torch and has_module("torch"):
        import torch

        torch.set_num_threads(threads)
        if torch_device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # autotuned per shape during warm-up

    dims = dict(img_size=bundle.img_size, channels=bundle.channels, content_dim=bundle.content_dim,
                class_dim=bundle.class_dim)
    model_dir_path, note = _eager_source(model_dir, export_dir, manifest, backends, threads, log)

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

    result["flops"] = flops = _flops(export_dir, manifest, networks)
    measure_matmul = functools.partial(matmul_rate, threads, n=matmul_n,
                                       torch_device=torch_device if needs_torch else None,
                                       use_torch=has_module("torch") and (needs_torch or torch_device == "cpu"))
    log("measuring the matrix-multiply rate")
    result["matmul"] = measure_matmul()
    result["env"]["load_average_start"] = load_average()
    times_start = cpu_times()

    sources = Sources(export_dir, manifest, model_dir_path, threads, torch_device, io_binding, note)
    rows: list[dict[str, Any]] = []
    with _Progress(len(networks) * len(backends) * len(batch_sizes), progress) as advance:
        for network in networks:
            feeds = {b: make_inputs(network, b, **dims, seed=seed) for b in batch_sizes}
            for backend in backends:
                rows += _bench_backend(sources, network, backend, batch_sizes, feeds, flops.get(network), warmup,
                                       iters, max_time_s, advance)
    result["env"]["load_average_end"] = load_average()
    result["env"]["others_cpu_share"] = others_cpu_share(times_start, cpu_times())
    log("measuring the matrix-multiply rate again")
    result["matmul"] = merge_matmul(result["matmul"], measure_matmul())
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
    return result


def _eager_source(model_dir: str | Path | None, export_dir: Path, manifest: dict[str, Any], backends: Sequence[str],
                  threads: int, log: Callable[[str], None]) -> tuple[Path | None, str | None]:
    """The model dir the eager rows load, or None with the reason (logged) when it cannot serve them."""
    path = Path(model_dir) if model_dir is not None else None
    if path is None or not any(b in TORCH_BACKENDS for b in backends):
        return path, None
    note = "torch is not installed" if not has_module("torch") else check_model_dir(path, export_dir, manifest, threads)
    if note:
        log(f"warning: {note}; eager rows are reported missing")
        return None, note
    return path, None


def _flops(export_dir: Path, manifest: dict[str, Any], networks: Sequence[str]) -> dict[str, Any]:
    """FLOPs per image from the plain ONNX graphs (counted at batch 1 and 2: the per-image count must agree)."""
    flops: dict[str, Any] = {}
    for network in networks:
        name = (manifest["models"].get(network, {}).get("files") or {}).get("onnx")
        if not name or not has_module("onnx"):
            flops[network] = None
            continue
        c1, c2 = count_flops(export_dir / name, 1), count_flops(export_dir / name, 2)
        flops[network] = {"per_image": c2["flops"] / 2, "by_op_per_image": {k: v / 2 for k, v in c2["by_op"].items()},
                          "batch1": c1["flops"], "uncounted": c2["uncounted"]}
    return flops


class _Progress:
    """A progress bar over the rows (or nothing); the context value is the call that advances it."""

    def __init__(self, total: int, show: bool):
        self.total, self.show = total, show
        self.bar = self.task = None

    def __enter__(self) -> Callable[[str], None]:
        if self.show:
            from lordkit.console import make_progress

            self.bar = make_progress(transient=True).__enter__()
            self.task = self.bar.add_task("bench", total=self.total, unit="row")
        return self.advance

    def advance(self, what: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=what)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _row(network: str, backend: str, batch: int, **kw: Any) -> dict[str, Any]:
    return {"network": network, "backend": backend, "precision": BACKENDS[backend][1], "batch": batch, **kw}


def _bench_backend(sources: Sources, network: str, backend: str, batch_sizes: Sequence[int],
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
    for baseline in ("eager", "reference"):
        base_rate = {(r["network"], r["batch"]): r["img_per_sec"] for r in rows
                     if r["backend"] == baseline and r["status"] == "ok"}
        for r in rows:
            base = base_rate.get((r["network"], r["batch"]))
            if r["status"] == "ok" and base:
                r[f"speedup_vs_{baseline}"] = r["img_per_sec"] / base


def _add_peak_fractions(rows: list[dict[str, Any]], peaks: dict[str, Any]) -> None:
    """Achieved GFLOP/s over the matmul rate of the row's device (and, on CUDA, precision)."""
    for r in rows:
        if r["status"] != "ok" or "gflops" not in r:
            continue
        cuda = str(r.get("device", "")).startswith("cuda")
        key = ("cuda-" + (r["precision"] if r["precision"] in ("fp16", "bf16") else "fp32")) if cuda else "cpu-fp32"
        if peaks.get(key):
            r["peak_fraction"], r["peak"] = r["gflops"] / peaks[key], key

