"""Transfer network images/s on the CPU: eager PyTorch vs AOTInductor (.pt2) vs ExecuTorch (.pte), and
the files' sizes on disk.

A random model of the reference size (lordkit.bench.target.reference_config: content 128, class 256,
4 AdaIN layers of 256, 64 px) or of the tiny size (--tiny, smoke runs) is built in memory; its transfer
network is compiled to `transfer.pt2` (lordkit.export.aoti; in the module's "cpu" form, and in the
ONNX form as `transfer.onnx-form.pt2`) and lowered to `transfer.pte` and
`transfer.int8.pte` (lordkit.export.executorch_export) in a temporary dir (or --work-dir), and each
is timed from Python at every batch size: warm-up calls, then the median of timed calls, the
backends taking turns call by call (a busy machine slows them alike). Figures
are printed, never judged, and appended as one JSON line to benchmarks/results/export_formats.jsonl
(benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR for smoke runs). Needs the train and executorch
extras and a C++ compiler (AOTInductor compiles C++):

    python benchmarks/export_formats.py                       # reference size, batch 1 and 8
    python benchmarks/export_formats.py --tiny --img-size 32 --iters 5   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch


def median_seconds(fns: dict[str, Callable[[], Any]], warmup: int, iters: int, max_time: float) -> dict[str, float]:
    """Median wall time of one call of each function after `warmup` calls each, the functions timed in
    turn (one call each per round, so a busy machine slows them alike), over `iters` rounds or about
    `max_time` seconds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    t_end = time.perf_counter() + max_time
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="lordkit.config's tiny model (smoke runs)")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-time", type=float, default=30.0, help="seconds of timing per batch size, about")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 .pte")
    ap.add_argument("--work-dir", type=Path, default=None, help="write the files here and keep them")
    args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    from lordkit.bench.target import reference_config
    from lordkit.export.aoti import aoti_parity, export_aoti, load_aoti
    from lordkit.export.executorch_export import (executorch_parity, export_executorch, file_name,
                                                  load_executorch)
    from lordkit.models import AmortizedModel, form_of, transfer_net

    cfg = reference_config(args.img_size, args.channels, tiny=args.tiny)
    torch.manual_seed(0)
    net = transfer_net(AmortizedModel(cfg).eval())
    gen = torch.Generator().manual_seed(1)
    example = tuple(torch.rand(2, cfg.channels, cfg.img_size, cfg.img_size, generator=gen) for _ in range(2))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lordkit-export-formats-"))
    work.mkdir(parents=True, exist_ok=True)

    # Write the files.
    files: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    pt2 = export_aoti(net, example, work / "transfer.pt2")
    files["aoti"] = {"file": pt2.name, "seconds_to_make": time.perf_counter() - t0}
    t0 = time.perf_counter()
    pt2_onnx = export_aoti(net, example, work / "transfer.onnx-form.pt2", form="onnx")
    files["aoti_onnx_form"] = {"file": pt2_onnx.name, "seconds_to_make": time.perf_counter() - t0}
    max_batch = max(max(batch_sizes), 2)
    t0 = time.perf_counter()
    pte = export_executorch(net, example, work / file_name("transfer"), max_batch=max_batch)
    files["executorch"] = {"file": pte.name, "seconds_to_make": time.perf_counter() - t0}
    if not args.no_int8:
        calibration = [tuple(torch.rand(8, cfg.channels, cfg.img_size, cfg.img_size, generator=gen) for _ in range(2))
                       for _ in range(4)]
        t0 = time.perf_counter()
        pte8 = export_executorch(net, example, work / file_name("transfer", "int8"), quantize="int8",
                                 max_batch=max_batch, calibration=calibration)
        files["executorch_int8"] = {"file": pte8.name, "seconds_to_make": time.perf_counter() - t0}
    for entry in files.values():
        entry["bytes"] = (work / entry["file"]).stat().st_size
    files["aoti"]["max_abs_err"] = aoti_parity(net, pt2, example, batch_sizes, tolerance=None)
    files["aoti_onnx_form"]["max_abs_err"] = aoti_parity(net, pt2_onnx, example, batch_sizes, tolerance=None)
    files["executorch"]["max_abs_err"] = executorch_parity(net, pte, example, batch_sizes, tolerance=None)
    if "executorch_int8" in files:
        files["executorch_int8"]["max_abs_err"] = executorch_parity(net, work / files["executorch_int8"]["file"],
                                                                    example, batch_sizes, tolerance=None)

    # Time them.
    runners: dict[str, Callable[..., Any]] = {"eager": net, "aoti": load_aoti(pt2), "aoti_onnx_form": load_aoti(pt2_onnx),
                                              "executorch": load_executorch(pte)}
    if "executorch_int8" in files:
        runners["executorch_int8"] = load_executorch(work / files["executorch_int8"]["file"])
    rows = []
    for batch in batch_sizes:
        x = tuple(torch.rand(batch, cfg.channels, cfg.img_size, cfg.img_size, generator=gen) for _ in range(2))
        with torch.inference_mode():
            medians = median_seconds({name: (lambda run=run: run(*x)) for name, run in runners.items()},
                                     args.warmup, args.iters, args.max_time)
        for backend, seconds in medians.items():
            rows.append({"backend": backend, "batch": batch, "latency_ms": seconds * 1e3, "img_per_sec": batch / seconds})

    # Print.
    from lordkit.bench.machine import cpu_model

    print(f"transfer network, {cfg.img_size} px x {cfg.channels}, {'tiny' if args.tiny else 'reference'} size; "
          f"{cpu_model()}, torch threads {torch.get_num_threads()}; eager in the {form_of(net)} form")
    print(f"{'backend':<18}{'batch':>6}{'latency ms':>12}{'images/s':>10}")
    for r in rows:
        print(f"{r['backend']:<18}{r['batch']:>6}{r['latency_ms']:>12.2f}{r['img_per_sec']:>10.1f}")
    for name, entry in files.items():
        errs = ", ".join(f"B={b}: {e:.1e}" for b, e in entry["max_abs_err"].items())
        print(f"{entry['file']:<24}{entry['bytes'] / 1e6:>8.2f} MB  made in {entry['seconds_to_make']:.1f} s;"
              f"  max abs error vs eager {errs}")
    print(f"files in {work}")
    figures = {"img_size": cfg.img_size, "channels": cfg.channels, "tiny": args.tiny, "rows": rows, "files": files,
               "torch_threads": torch.get_num_threads(), "eager_form": form_of(net),
               "executorch_max_batch": max_batch}
    from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

    print(f"appended to {append_result('export_formats', figures, args=args)}")
    return figures


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
