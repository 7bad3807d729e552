"""Inference latency and throughput of lordkit's exported networks: a thin script over lordkit.bench.

The same measurement as `lordkit bench` (see docs/bench.md), plus a tiny random model for smoke runs
and an onnxruntime settings sweep (what each session option is worth). Needs lordkit installed, with
torch for the random model and matplotlib for the PNG: pip install -e '.[train,plot]'

    python benchmarks/latency.py                                   # random reference model, every backend
    python benchmarks/latency.py --model EXPORT --model-dir MODEL  # a real export and the model it came from
    python benchmarks/latency.py --batch-sizes 8 --backends ort-cpu-opt --ort-sweep generator:8
    python benchmarks/latency.py --device cuda --backends eager,torchscript,torch-fp16,torch-bf16   # a GPU box
    python benchmarks/latency.py --tiny --img-size 32 --batch-sizes 1,2 --iters 2                  # smoke run

Every run writes its whole result as `bench-<model>-<time>.json` (and `.png`) under --out, and, run as a
script, appends its figures as one line to benchmarks/results/latency.jsonl (benchmarks/_results.py;
LORDKIT_RESULTS_DIR=DIR appends to DIR/latency.jsonl instead: use it for smoke runs).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console

from lordkit import bench as lb
from lordkit.errors import LordkitError
from lordkit.export_format import NETWORKS, file_name

RESULTS = Path(__file__).resolve().parent / "results"


def parse_sweep(text: str | None) -> tuple[str, int] | None:
    """--ort-sweep NETWORK[:BATCH] (batch 8 when not given)."""
    if not text:
        return None
    network, _, batch = text.partition(":")
    lb.parse_list([network], NETWORKS, "network")
    try:
        return network, lb.parse_batch_sizes([int(batch or 8)])[0]
    except ValueError:
        raise LordkitError(f"--ort-sweep wants NETWORK:BATCH, got {text!r}") from None


def figures(result: dict, json_path: Path) -> dict:
    """The figures of a run for its result line: per row latency, images/s and ratios; the machine's
    matmul rate; the model; where the whole result is."""
    rows = []
    for r in result["rows"]:
        row = {k: r[k] for k in ("network", "backend", "precision", "batch", "status")}
        if r["status"] == "ok":
            row.update(p50_ms=r["latency_ms"]["p50"], p99_ms=r["latency_ms"]["p99"], img_per_sec=r["img_per_sec"])
            row.update({k: r[k] for k in ("speedup_vs_eager", "speedup_vs_reference", "gflops", "peak_fraction")
                        if k in r})
        else:
            row["reason"] = r.get("reason")
        rows.append(row)
    a = result.get("alignment") or {}
    return {"format": result["format"], "json": str(json_path),
            "model": {k: v for k, v in result["model"].items() if k not in ("export_dir", "model_dir")},
            "threads": result["settings"]["threads"], "matmul_gflops": result["matmul"]["peak"],
            "gflop_per_image": {n: f["per_image"] / 1e9 if f else None for n, f in result["flops"].items()},
            "others_cpu_share": result["env"].get("others_cpu_share"), "rows": rows,
            "alignment_ms": a["latency_ms"]["total"]["p50"] if a.get("status") == "ok" else None,
            "quality": result.get("quality") or [], "ort_sweep": result.get("ort_sweep")}


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the benchmark; `record`: also append the figures to the result file (what the script does)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="export dir (default: a random model of the reference size)")
    ap.add_argument("--model-dir", default=None, help="model dir the export came from (eager and compile rows)")
    ap.add_argument("--work-dir", type=Path, default=None, help="build the random model here and keep it (reused if present)")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--channels", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="random model of lordkit.config's tiny size (smoke runs)")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--backends", default=None, help="comma-separated (default: as `lordkit bench`)")
    ap.add_argument("--models", default="content_encoder,class_encoder,generator,transfer")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-time", type=float, default=20.0, help="seconds of timing per row")
    ap.add_argument("--device", default="auto", help="device of the torch rows")
    ap.add_argument("--no-align", action="store_true")
    ap.add_argument("--align-image", default=None)
    ap.add_argument("--matmul-size", type=int, default=None, help="side of the matmul measuring the fp32 rate")
    ap.add_argument("--ort-sweep", default=None, metavar="NETWORK:BATCH",
                    help="also time onnxruntime settings one at a time on this network's plain .onnx")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default=None, help="file stem (default: bench-<model>-<time>)")
    args = ap.parse_args(argv)

    # Every argument is checked before anything slow starts (benchmark_target checks the model's).
    batch_sizes = lb.parse_batch_sizes(args.batch_sizes)
    networks = lb.parse_list(args.models, NETWORKS, "network")
    torch_device = lb.resolve_torch_device(args.device)
    backends = lb.parse_list(args.backends, list(lb.BACKENDS), "backend") if args.backends else None
    lb.check_settings(args.threads, args.warmup, args.iters, args.max_time, args.matmul_size)
    sweep = parse_sweep(args.ort_sweep)
    console = Console(stderr=True)

    def log(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    wanted = backends or lb.default_backends(torch_device)
    with lb.benchmark_target(args.model, args.model_dir, None, args.img_size, args.channels, tiny=args.tiny,
                             int8="int8" in wanted, fp16="fp16" in wanted or "ort-cuda-fp16" in wanted,
                             work_dir=args.work_dir, log=log) as (export_dir, md, info):
        result = lb.run_benchmark(export_dir, md, batch_sizes=batch_sizes, backends=backends, networks=networks,
                                  threads=args.threads, warmup=args.warmup, iters=args.iters, max_time_s=args.max_time,
                                  device=torch_device, align=not args.no_align, align_image=args.align_image,
                                  model_info=info, matmul_n=args.matmul_size, progress=True, log=log)
        if sweep is not None:
            network, batch = sweep
            model = result["model"]
            feeds = lb.make_inputs(network, batch, model["img_size"], model["channels"], model["content_dim"],
                                   model["class_dim"])
            onnx_file = file_name(network, "onnx")
            log(f"onnxruntime settings sweep on {onnx_file}, batch {batch}")
            result["ort_sweep"] = {"network": network, "batch": batch, "file": onnx_file,
                                   "rows": lb.ort_settings_sweep(export_dir / onnx_file, feeds,
                                                                 result["settings"]["threads"], iters=args.iters,
                                                                 max_time_s=args.max_time)}
    stem = args.name or f"bench-{result['model'].get('model_name') or 'model'}-{datetime.now():%Y%m%d-%H%M%S}"
    json_path, png_path = lb.write_results(result, args.out, stem)
    Console(width=160).print(lb.results_table(result))
    for row in (result.get("ort_sweep") or {}).get("rows", []):
        print(f"ort sweep {row['setting']:>24}: p50 {row['latency_ms']['p50']:9.2f} ms  {row['img_per_sec']:9.1f} img/s")
    warning = lb.load_warning(result)
    if warning:
        print(f"warning: {warning}")
    print(f"results: {json_path}\nplot: {png_path or lb.PLOT_HINT}")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('latency', figures(result, json_path), args=args, argv=argv)}")
    return result


if __name__ == "__main__":
    try:
        main(record=True)
    except LordkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
