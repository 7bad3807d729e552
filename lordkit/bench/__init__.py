"""Inference benchmarks of an export dir: latency and throughput per backend, batch size and network.

`run_benchmark(export_dir, model_dir=None, ...)` times every exported network (content_encoder,
class_encoder, generator, transfer) on every backend asked for and returns one dict: the environment
(CPU, GPU, library versions, threads, load average), the settings, FLOPs per image counted from the
ONNX graphs, the machine's measured fp32 matrix-multiply rate, one row per (network, backend, batch)
and the face-alignment latency. `results_table`, `load_warning` and `write_results` turn it into a
rich table, a line of text and a JSON file and PNG. `benchmark_target` says what to
benchmark: an export, or a random model of the reference size built in a temp dir. docs/bench.md
says what each backend row means.

Measurement: every backend gets the same seeded inputs; a few warm-up calls first
(TorchScript profiling runs, cuDNN autotuning, onnxruntime's arenas); the device is synchronised
before every clock read; latencies are per call, reported as p50 / p90 / p99, images/s = batch / p50.
Each row's calls run back to back (steady state). Other processes' share of the CPU over the timed
rows is measured (/proc/stat against this process's own time), and the matmul rate is measured at
the start and at the end: either says when other work disturbed the run. A time budget per row
bounds slow rows (at least MIN_TIMED_ITERS calls are timed), and a row whose predicted call time is
far above the budget (SKIP_FACTOR times) is skipped and says so, so that a 2-core CPU finishes.

Modules, one job each: options (what can be asked for, parsed and checked), machine (the machine's
probe, CPU shares, thread settings, matmul rate), flops, timing, runners (the backends), align (face
alignment), sweep (onnxruntime settings one at a time), target (what to benchmark), run (the
benchmark), labels, report (table, text, JSON) and plot (the PNG, with matplotlib).

Nothing here imports torch at module level: ONNX backends are benchmarked on a torch-free box.
"""

from lordkit.export_format import NETWORKS

from .flops import count_flops
from .options import (BACKENDS, DEFAULT_BACKENDS, DEFAULT_BATCH_SIZES, check_settings, default_backends,
                      parse_batch_sizes, parse_list, resolve_torch_device)
from .report import PLOT_HINT, load_warning, results_table, write_results
from .run import FORMAT, run_benchmark
from .runners import make_inputs
from .sweep import ort_settings_sweep
from .target import benchmark_target, check_random_target

__all__ = [
    "BACKENDS", "DEFAULT_BACKENDS", "DEFAULT_BATCH_SIZES", "FORMAT", "NETWORKS", "PLOT_HINT", "benchmark_target",
    "check_random_target", "check_settings", "count_flops", "default_backends", "load_warning", "make_inputs",
    "ort_settings_sweep", "parse_batch_sizes", "parse_list", "resolve_torch_device", "results_table",
    "run_benchmark", "write_results",
]
