"""Stage-1 images/s on 1 and on 2 processes (torchrun), side by side in one run.

On CPU this uses gloo; on a machine with several GPUs, NCCL (one GPU per process). Both runs train
the same model on the same generated data for the same number of steps; img/s is the median of the
rates logged after the first quarter of the run (rank 0's metrics.jsonl, which counts the global
batch).

    python benchmarks/ddp_throughput.py                    # CPU, gloo, 1 vs 2 processes
    python benchmarks/ddp_throughput.py --procs 1,8 --device auto --img-size 64 --set model.adain_dim=256

Writes --out (benchmarks/results/ddp_throughput.json) and, run as a script, appends the same figures as
one line to benchmarks/results/ddp_throughput.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR
appends to DIR/ddp_throughput.jsonl instead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from lordkit.fsutil import atomic_write_json

SMALL = ["model.content_dim=32", "model.class_dim=32", "model.n_adain_layers=3", "model.adain_dim=32",
         "model.gen_last_dim=16", "latent.log_every=5"]


def run(procs: int, home: Path, model: str, args, overrides: list[str]) -> dict:
    env = {**os.environ, "LORDKIT_HOME": str(home), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs))}
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
           str(29600 + procs), "-m", "lordkit", "train", "-dn", "bench", "-mn", model, *sets,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device", args.device,
           "--no-tensorboard", "--loss", "l1"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(x) for x in (home / "models" / model / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_sec"] for r in rows[len(rows) // 4:]]
    return {"procs": procs, "img_per_sec": statistics.median(rates), "loss_last": rows[-1]["loss"],
            "steps": rows[-1]["step"], "omp_threads_per_proc": int(env["OMP_NUM_THREADS"])}


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the benchmark; `record`: also append the figures to the result file (what the script does)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/results/ddp_throughput.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        subprocess.run([sys.executable, "-m", "lordkit", "--base-dir", str(home), "preprocess", "-di", "synthetic",
                        "-dn", "bench", "--img-size", str(args.img_size)], check=True, capture_output=True)
        overrides = SMALL + args.set
        results = {"device": args.device, "img_size": args.img_size, "batch_size": args.batch_size,
                   "epochs": args.epochs, "overrides": overrides, "runs": []}
        for p in map(int, args.procs.split(",")):
            r = run(p, home, f"m{p}", args, overrides)
            results["runs"].append(r)
            print(f"{p} process(es): {r['img_per_sec']:8.1f} img/s   loss after {r['steps']} steps {r['loss_last']:.4f}",
                  flush=True)
    base = results["runs"][0]["img_per_sec"]
    for r in results["runs"]:
        r["speedup"] = r["img_per_sec"] / base
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('ddp_throughput', results, args=args, argv=argv)}")
    return results


if __name__ == "__main__":
    main(record=True)
