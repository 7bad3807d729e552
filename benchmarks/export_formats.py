"""Transfer network images/s and max abs error on the CPU in every format lordkit exports, side by side:
eager PyTorch, TorchScript (.pt), AOTInductor (.pt2, and the ONNX form's .pt2), onnxruntime (.opt.onnx)
and ExecuTorch (.pte, and an int8 .pte); and the files' sizes on disk.

A random model dir of the reference size (lordkit.bench.target.reference_config: content 128, class
256, 4 AdaIN layers of 256, 64 px) or of the tiny size (--tiny, smoke runs) is written and exported by
`lordkit export`'s own code with --aoti and --executorch (parity batch sizes = the timed ones, so the
.pte programs take the largest), in a temporary dir or --work-dir (kept and reused). The transfer
network's files are then timed from Python at every batch size: warm-up calls, then the median of
timed calls, the backends taking turns call by call (a busy machine slows them alike), each on fresh
random inputs checked against eager. Figures are printed, never judged, and appended as one JSON line to
benchmarks/results/export_formats.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR for smoke
runs). Needs the train and executorch extras and a C++ compiler (AOTInductor compiles C++):

    python benchmarks/export_formats.py                       # reference size, batch 1, 8 and 32
    python benchmarks/export_formats.py --tiny --img-size 32 --batch-sizes 1,2 --iters 3   # smoke run
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


def build(work: Path, cfg, batch_sizes: list[int], int8: bool) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The model dir and its export (reused when `work` holds them), the ONNX-form .pt2 and the int8
    .pte beside; returns the export dir and {backend: {file, seconds_to_make}}."""
    from lordkit.config import LordConfig
    from lordkit.export.aoti import export_aoti
    from lordkit.export.executorch_export import export_executorch, file_name
    from lordkit.export.exporter import export_model
    from lordkit.modeldir import write_random_model

    export = work / "export"
    made: dict[str, dict[str, Any]] = {}
    if not (export / "manifest.json").is_file():
        model_dir = write_random_model(work / "model", LordConfig(model=cfg), seed=0, force=True)
        t0 = time.perf_counter()
        export_model(model_dir, export, aoti=True, executorch=True, batch_sizes=tuple(batch_sizes), show=False,
                     force=True)
        made["export"] = {"seconds_to_make": time.perf_counter() - t0}
    net = transfer_network(work)
    gen = torch.Generator().manual_seed(1)
    example = tuple(torch.rand(2, cfg.channels, cfg.img_size, cfg.img_size, generator=gen) for _ in range(2))
    extra = {"aoti_onnx_form": (work / "transfer.onnx-form.pt2",
                                lambda path: export_aoti(net, example, path, form="onnx"))}
    if int8:
        calibration = [tuple(torch.rand(8, cfg.channels, cfg.img_size, cfg.img_size, generator=gen) for _ in range(2))
                       for _ in range(4)]
        extra["executorch_int8"] = (work / file_name("transfer", "int8"), lambda path: export_executorch(
            net, example, path, quantize="int8", max_batch=max(8, *batch_sizes), calibration=calibration))
    for name, (path, make) in extra.items():
        if not path.is_file():
            t0 = time.perf_counter()
            make(path)
            made[name] = {"seconds_to_make": time.perf_counter() - t0}
    return export, made


def transfer_network(work: Path) -> torch.nn.Module:
    from lordkit.modeldir import load_amortized
    from lordkit.models import eager_networks

    return eager_networks(load_amortized(work / "model").eval())["transfer"]


def runners(work: Path, export: Path, int8: bool) -> dict[str, tuple[Path | None, Callable[..., Any]]]:
    """{backend: (its file, a call on two image tensors returning the output tensor)}."""
    import warnings

    import onnxruntime as ort

    from lordkit.export.aoti import load_aoti
    from lordkit.export.executorch_export import load_executorch

    def first(fn):
        return lambda *x: (lambda out: out[0] if isinstance(out, (list, tuple)) else out)(fn(*x))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(export / "transfer.opt.onnx"), opts, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(export / "transfer.pt"))
    out = {"eager": (None, transfer_network(work)), "torchscript": (export / "transfer.pt", ts),
           "aoti": (export / "transfer.pt2", first(load_aoti(export / "transfer.pt2"))),
           "aoti_onnx_form": (work / "transfer.onnx-form.pt2", first(load_aoti(work / "transfer.onnx-form.pt2"))),
           "onnxruntime": (export / "transfer.opt.onnx", lambda a, b: torch.from_numpy(
               sess.run(None, {"content_image": a.numpy(), "class_image": b.numpy()})[0])),
           "executorch": (export / "transfer.pte", load_executorch(export / "transfer.pte"))}
    if int8:
        out["executorch_int8"] = (work / "transfer.int8.pte", load_executorch(work / "transfer.int8.pte"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="lordkit.config's tiny model (smoke runs)")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-time", type=float, default=30.0, help="seconds of timing per batch size, about")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 .pte")
    ap.add_argument("--work-dir", type=Path, default=None, help="write the files here and keep them (reused)")
    args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    from lordkit.bench.machine import cpu_model
    from lordkit.bench.target import reference_config

    cfg = reference_config(args.img_size, args.channels, tiny=args.tiny)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lordkit-export-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    export, made = build(work, cfg, batch_sizes, not args.no_int8)
    backends = runners(work, export, not args.no_int8)
    eager = backends["eager"][1]

    gen = torch.Generator().manual_seed(2)
    rows = []
    for batch in batch_sizes:
        x = tuple(torch.rand(batch, cfg.channels, cfg.img_size, cfg.img_size, generator=gen) for _ in range(2))
        with torch.inference_mode():
            want = eager(*x).double()
            errors = {name: float((run(*x).double() - want).abs().max()) for name, (_, run) in backends.items()}
            medians = median_seconds({name: (lambda run=run: run(*x)) for name, (_, run) in backends.items()},
                                     args.warmup, args.iters, args.max_time)
        for backend, seconds in medians.items():
            rows.append({"backend": backend, "batch": batch, "latency_ms": seconds * 1e3,
                         "img_per_sec": batch / seconds, "max_abs_err": errors[backend]})
    files = {name: {"file": path.name, "bytes": path.stat().st_size, **made.get(name, {})}
             for name, (path, _) in backends.items() if path is not None}

    print(f"transfer network, {cfg.img_size} px x {cfg.channels}, {'tiny' if args.tiny else 'reference'} size; "
          f"{cpu_model()}, torch and onnxruntime threads {torch.get_num_threads()}")
    print(f"{'backend':<18}{'batch':>6}{'latency ms':>12}{'images/s':>10}{'max abs err':>13}")
    for r in rows:
        print(f"{r['backend']:<18}{r['batch']:>6}{r['latency_ms']:>12.2f}{r['img_per_sec']:>10.1f}"
              f"{r['max_abs_err']:>13.1e}")
    for name, entry in files.items():
        print(f"{name:<18}{entry['file']:<26}{entry['bytes'] / 1e6:>8.2f} MB")
    print(f"files in {work}")
    figures = {"img_size": cfg.img_size, "channels": cfg.channels, "tiny": args.tiny, "rows": rows, "files": files,
               "made": made, "threads": torch.get_num_threads(), "cpu": cpu_model()}
    from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

    print(f"appended to {append_result('export_formats', figures, args=args)}")
    return figures


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
