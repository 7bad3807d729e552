"""onnxruntime on the ONNX graphs of torch.onnx's two exporters: torch.export-based (lordkit's default)
against TorchScript-based ("legacy"), fp32 and int8, rows interleaved in one process.

A seeded random model of the reference size (lordkit.bench.reference_config: 64 px, content 128,
class 256, 4 AdaIN layers of 256) is exported both ways (lordkit.export.exporter.export_model, ONNX
only) and each export quantized to int8 (lordkit.export.quantize, calibrated on the same smooth
random images). Rows, per batch size, all on the same inputs:
  <exporter> fp32   the export's <network>.opt.onnx (what the runtime runs for fp32)
  <exporter> int8   the export's <network>.int8.onnx
Sessions are opened as the runtime opens them (lordkit.runtime.session.session_options: onnxruntime's
full graph optimisation) with --threads intra-op threads. Interleaved: each round runs a block of calls
of every row in turn (the order rotating per round), so load from other processes and clock changes
fall on all rows alike; a row's figure is its median call. max_abs_err is against the eager PyTorch
model in float32 on the same inputs. --graphs prints, per file, the op-type histogram of the file and
of onnxruntime's optimised graph (what the CPU provider actually runs).

    python benchmarks/onnx_exporters.py                          # transfer, batch 1, 8, 32; 5 rounds
    python benchmarks/onnx_exporters.py --network generator --batch-sizes 8 --rounds 3 --graphs
    LORDKIT_RESULTS_DIR=/tmp python benchmarks/onnx_exporters.py --tiny --batch-sizes 1,2 --rounds 1

Each run appends one line to benchmarks/results/onnx_exporters.jsonl (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lordkit.errors import LordkitError
from lordkit.export_format import NETWORKS, file_name

EXPORTERS = ("torch.export", "legacy")
PRECISIONS = {"fp32": "onnx_opt", "int8": "onnx_int8"}  # precision -> the file kind the runtime runs


def build(work: Path, cfg, exporters: list[str], int8: bool, log: Callable[[str], None]) -> tuple[Path, dict[str, Path]]:
    """The random model and one export per exporter (with int8 files); returns (model dir, export dirs)."""
    from lordkit.bench.target import N_CALIBRATION_IMGS
    from lordkit.config import LordConfig
    from lordkit.export.exporter import export_model
    from lordkit.export.quantize import quantize_export, smooth_noise_images
    from lordkit.modeldir import write_random_model

    exports = {e: work / f"export-{e}" for e in exporters}
    if (work / "model").is_dir() and all((out / "manifest.json").is_file() for out in exports.values()):
        log(f"reusing the model and exports in {work}")  # a --work-dir kept from an earlier run
        return work / "model", exports
    model_dir = write_random_model(work / "model", LordConfig(model=cfg), seed=0, force=True)
    calibration = smooth_noise_images(N_CALIBRATION_IMGS, cfg.img_size, cfg.channels)
    for exporter, out in exports.items():
        t0 = time.perf_counter()
        export_model(model_dir, out, torchscript=False, batch_sizes=(1, 8), show=False, progress=False,
                     onnx_exporter=exporter, force=True)
        log(f"exported with {exporter} in {time.perf_counter() - t0:.1f} s")
        if int8:
            t0 = time.perf_counter()
            quantize_export(out, calibration, calibration_source="smooth random images (benchmark)", force=True)
            log(f"quantized the {exporter} export in {time.perf_counter() - t0:.1f} s")
    return model_dir, exports


def op_histogram(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(collections.Counter(
        (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}") for n in model.graph.node).items()))


def optimised_histogram(path: Path, threads: int, work: Path) -> dict[str, int]:
    """Op types of the graph onnxruntime runs (full optimisation, CPU provider), written out and read back."""
    import onnxruntime as ort

    from lordkit.runtime.session import session_options

    opts = session_options(threads)
    opts.optimized_model_filepath = str(work / f"{path.stem}.ort-optimised.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return op_histogram(Path(opts.optimized_model_filepath))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", default="transfer", choices=NETWORKS)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-s", type=float, default=1.0, help="seconds of calls per row per round (at least 2 calls)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--tiny", action="store_true", help="lordkit.config's tiny model (smoke runs)")
    ap.add_argument("--graphs", action="store_true", help="print op-type histograms (file and onnxruntime's graph)")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the model and exports here")
    args = ap.parse_args(argv)
    exporters = [e for e in args.exporters.split(",") if e]
    precisions = [p for p in args.precisions.split(",") if p]
    bad = [e for e in exporters if e not in EXPORTERS] + [p for p in precisions if p not in PRECISIONS]
    if bad or not exporters or not precisions:
        ap.error(f"unknown exporter or precision {bad[0] if bad else None!r}; "
                 f"use {', '.join(EXPORTERS)} and {', '.join(PRECISIONS)}")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        ap.error(f"--batch-sizes must be integers, got {args.batch_sizes!r}")
    if min(batch_sizes) < 1 or args.rounds < 1 or args.block_s <= 0 or (args.threads is not None and args.threads < 1):
        ap.error("batch sizes, --rounds and --threads must be >= 1 and --block-s > 0")

    import onnxruntime as ort
    import torch

    from lordkit.bench.machine import cpu_model, physical_cores
    from lordkit.bench.target import reference_config
    from lordkit.export.exporter import networks, random_inputs
    from lordkit.modeldir import load_amortized, load_config
    from lordkit.runtime.session import session_options

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    cfg = reference_config(tiny=args.tiny, img_size=32 if args.tiny else 64)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"CPU {cpu_model()}; onnxruntime {ort.__version__}, torch {torch.__version__}, {threads} threads")
    figures: dict[str, Any] = {"network": args.network, "threads": threads, "img_size": cfg.img_size,
                               "tiny": args.tiny, "rows": [], "graphs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir, exports = build(work, cfg, exporters, "int8" in precisions, log)
        net = next(n for n in networks(load_amortized(model_dir).eval()) if n.name == args.network)
        mc = load_config(model_dir).model
        rows = [(e, p) for e in exporters for p in precisions]
        sessions = {}
        for e, p in rows:
            path = exports[e] / file_name(args.network, PRECISIONS[p])
            sessions[(e, p)] = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
            figures["graphs"][f"{e} {p}"] = {"file": path.name, "ops": op_histogram(path),
                                            "onnxruntime_ops": optimised_histogram(path, threads, work)}
        if args.graphs:
            for key, g in figures["graphs"].items():
                print(f"{key} {g['file']}\n  file:        {g['ops']}\n  onnxruntime: {g['onnxruntime_ops']}")

        rng = np.random.default_rng(0)
        for batch in batch_sizes:
            inputs = random_inputs(net, mc, batch, rng)
            feeds = dict(zip(net.inputs, inputs))
            with torch.inference_mode():
                want = net.module(*(torch.from_numpy(x) for x in inputs)).numpy().astype(np.float64)
            calls = {r: (lambda s=sessions[r]: s.run(None, feeds)[0]) for r in rows}
            errors = {r: float(np.abs(c().astype(np.float64) - want).max()) for r, c in calls.items()}  # also warms up
            per_block = {}
            for r, c in calls.items():
                t0 = time.perf_counter()
                c()
                per_block[r] = max(2, int(args.block_s / max(time.perf_counter() - t0, 1e-4)))
            times: dict[tuple[str, str], list[float]] = {r: [] for r in rows}
            for k in range(args.rounds):
                for r in rows[k % len(rows):] + rows[:k % len(rows)]:
                    calls[r]()  # the block's first call wakes the engine's threads; untimed
                    for _ in range(per_block[r]):
                        t0 = time.perf_counter()
                        calls[r]()
                        times[r].append(time.perf_counter() - t0)
            base = {p: batch / statistics.median(times[(exporters[-1], p)]) for p in precisions}
            for e, p in rows:
                img_per_sec = batch / statistics.median(times[(e, p)])
                row = {"exporter": e, "precision": p, "batch": batch, "img_per_sec": img_per_sec,
                       "median_ms": 1e3 * statistics.median(times[(e, p)]), "calls": len(times[(e, p)]),
                       f"x_{exporters[-1]}": img_per_sec / base[p], "max_abs_err": errors[(e, p)]}
                figures["rows"].append(row)
                print(f"batch {batch:3d}  {e:<13} {p}  {img_per_sec:8.1f} img/s  x{row[f'x_{exporters[-1]}']:5.3f}"
                      f"  max abs err {errors[(e, p)]:.1e}", flush=True)
    return figures


if __name__ == "__main__":
    try:
        result = main()
    except LordkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

    print(f"appended to {append_result('onnx_exporters', result)}")
