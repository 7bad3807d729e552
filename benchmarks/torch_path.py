"""The torch path against the reference formulation: transfer images/s, rows interleaved in one process.

Rows, all on the same inputs and the same weights (a reference-size model: 64 px, 4 AdaIN layers of
256, random weights):
  reference     the public code's formulation (lordkit.bench.reference): nn.Upsample, AdaIN through
                F.batch_norm on a (1, B*C, H, W) view, NCHW fp32 eager — the baseline of the x column
  eager-onnx-form  lordkit's networks in the "onnx" form, which the ONNX export traces (NCHW,
                F.interpolate, elementwise AdaIN) and was also its eager form before the CPU path below
  eager         lordkit's eager model in the "cpu" form: channels-last throughout, each upsampling and
                3x3 conv as one transposed conv, AdaIN as group_norm + addcmul
  torchscript   the export's frozen transfer.pt (what the C++ example runs)
  bf16          lordkit eager under CPU bf16 autocast (AdaIN statistics stay float32)
  onnxruntime   the export's transfer.opt.onnx, fp32

Interleaved: each round runs a block of calls of every row in turn (the order rotating per round), so
that load from other processes and clock changes fall on all rows alike; a row's figure is its median
call. The instruction sets found are printed with the figures. --profile adds torch profiler tables
of the reference, eager-onnx-form and eager at one batch size (docs/bench.md keeps them).

    python benchmarks/torch_path.py                      # batch 1, 8, 32; 5 rounds
    python benchmarks/torch_path.py --batch-sizes 8 --rounds 3 --profile 8

Writes --out (benchmarks/results/torch_path.json) and, run as a script, appends the same figures as one
line to benchmarks/results/torch_path.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR appends to
DIR/torch_path.jsonl instead).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lordkit.bench.machine import cpu_flags, cpu_model
from lordkit.bench.reference import reference_networks
from lordkit.config import LordConfig, ModelConfig
from lordkit.fsutil import atomic_write_json, atomic_write_text
from lordkit.modeldir import load_amortized, write_random_model
from lordkit.models import set_form, transfer_net

ROWS = ("reference", "eager-onnx-form", "eager", "torchscript", "bf16", "onnxruntime")


def build(tmp: Path, threads: int):
    from lordkit.export.exporter import export_model

    cfg = LordConfig(model=ModelConfig(n_imgs=16, n_classes=8))
    model_dir = write_random_model(tmp / "model", cfg, seed=0)
    export_model(model_dir, tmp / "export", onnx=True, torchscript=True, show=False)
    amortized = load_amortized(model_dir)
    eager = transfer_net(amortized).eval()
    before = set_form(transfer_net(load_amortized(model_dir)).eval(), "onnx")  # the previous eager form
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(tmp / "export" / "transfer.opt.onnx"), opts, providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(tmp / "export" / "transfer.pt"))
    return {"reference": reference_networks(amortized, cfg.model)["transfer"], "eager-onnx-form": before,
            "eager": eager, "torchscript": scripted, "bf16": eager, "onnxruntime": sess}


def caller(name: str, net, a: np.ndarray, b: np.ndarray):
    if name == "onnxruntime":
        feeds = {"content_image": a, "class_image": b}
        return lambda: net.run(None, feeds)[0]
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    def call():
        with torch.inference_mode():
            if name == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return net(ta, tb).float().numpy()
            return net(ta, tb).numpy()

    return call


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the benchmark; `record`: also append the figures to the result file (what the script does)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-s", type=float, default=1.0, help="seconds of calls per row per round (at least 2)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--profile", type=int, default=0, help="batch size of the profiler tables (0: none)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "torch_path.json")
    args = ap.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown row {unknown[0]!r}; use one of: {', '.join(ROWS)}")
    flags = cpu_flags()
    env = {"cpu": cpu_model(), "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                                    "amx_tile") if f in flags], "torch": torch.__version__,
           "threads": threads}
    print(f"CPU {env['cpu']}; instruction sets: {', '.join(env['isa']) or 'none of avx2/avx512/amx'}; "
          f"torch {env['torch']}, {threads} threads", flush=True)
    results: dict = {"env": env, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        nets = build(Path(tmp), threads)
        rng = np.random.default_rng(0)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            a = rng.random((batch, 3, 64, 64), dtype=np.float32)
            b = rng.random((batch, 3, 64, 64), dtype=np.float32)
            calls = {r: caller(r, nets[r], a, b) for r in rows}
            outs = {r: np.asarray(c()) for r, c in calls.items()}  # first call: warm-up and the parity figure
            per_block = {}
            for r, c in calls.items():
                t0 = time.perf_counter()
                c()
                per_block[r] = max(2, int(args.block_s / max(time.perf_counter() - t0, 1e-4)))
            times: dict[str, list[float]] = {r: [] for r in rows}
            for k in range(args.rounds):
                for r in rows[k % len(rows):] + rows[:k % len(rows)]:
                    calls[r]()  # the block's first call wakes the engine's threads; untimed
                    for _ in range(per_block[r]):
                        t0 = time.perf_counter()
                        calls[r]()
                        times[r].append(time.perf_counter() - t0)
            base = batch / statistics.median(times["reference"]) if "reference" in rows else None
            for r in rows:
                ips = batch / statistics.median(times[r])
                diff = float(np.abs(outs[r] - outs["reference"]).max()) if "reference" in rows else None
                row = {"row": r, "batch": batch, "img_per_sec": ips, "calls": len(times[r]),
                       "x_reference": ips / base if base else None, "max_abs_diff_vs_reference": diff}
                results["rows"].append(row)
                print(f"batch {batch:3d}  {r:<13} {ips:8.1f} img/s  x{row['x_reference'] or float('nan'):5.2f}  "
                      f"max |diff| {diff if diff is not None else float('nan'):.1e}", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            tables = []
            a = torch.rand(args.profile, 3, 64, 64)
            for r in ("reference", "eager-onnx-form", "eager"):
                with torch.inference_mode():
                    nets[r](a, a)
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        for _ in range(3):
                            nets[r](a, a)
                tables.append(f"{r}, transfer, batch {args.profile}, 3 calls\n"
                              + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
            text = "\n\n".join(tables)
            print(text)
            atomic_write_text(args.out.with_suffix(".profile.txt"), text + "\n")
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('torch_path', {**results, 'json': str(args.out)}, args=args, argv=argv)}")
    return results


if __name__ == "__main__":
    main(record=True)
