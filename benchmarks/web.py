"""The browser page of `lordkit export --web` (onnxruntime-web on WebAssembly, in the system's headless
Chromium) against onnxruntime in Python on the same CPU, in one run, rows interleaved.

A seeded random model of the reference size (lordkit.bench.reference_config: 64 px, content 128,
class 256, 4 AdaIN layers of 256) is exported (ONNX only) with web/ added (lordkit.export.web). A
call is what the page's Transfer button runs: B content crops into one class-bank class, the content
encoder on B images and the generator on B pairs, in one batch of B (the Python row:
Transfer.transfer with batch_size B, provider cpu). Rows:
  web wasm 1 thread     the page served plainly (no cross-origin isolation: onnxruntime-web runs one thread)
  web wasm N threads    the page served with COOP/COEP headers (SharedArrayBuffer: N = the browser's
                        hardwareConcurrency, at most 8)
  python 1 thread, python N threads   onnxruntime's CPU provider with that many intra-op threads
Each round runs a block of calls of every row in turn (order rotating per round); a row's figure is
its median call, as images/s = B / median. Timings in the page use performance.now() around
`await transfer(...)`. max_abs_err: the page's output against Python's on the same crops (batch 8).

    python benchmarks/web.py                                   # batch 1 and 8, 5 rounds
    python benchmarks/web.py --screenshot docs/web-page.png --screenshot-export EXPORT --screenshot-data DATASET
    LORDKIT_RESULTS_DIR=/tmp python benchmarks/web.py --tiny --rounds 1 --block-s 0.2

Each run appends one line to benchmarks/results/web.jsonl (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PAGE_CALLS = """(async (B, blockMs) => {
  const {state, transfer} = window.lordkit, ex = state.ex, n = ex.imgSize * ex.imgSize * ex.channels;
  const crops = Array.from({length: B}, (_, b) => Uint8ClampedArray.from({length: n}, (_, i) => (i * 7 + b * 13) % 256));
  await transfer(ex, crops, [0], {batchSize: B});
  const times = [], t0 = performance.now();
  while (times.length < 2 || performance.now() - t0 < blockMs) {
    const t = performance.now();
    await transfer(ex, crops, [0], {batchSize: B});
    times.push(performance.now() - t);
  }
  return times;
})"""

PAGE_OUTPUT = """(async (B) => {
  const {state, transfer} = window.lordkit, ex = state.ex, n = ex.imgSize * ex.imgSize * ex.channels;
  const crops = Array.from({length: B}, (_, b) => Uint8ClampedArray.from({length: n}, (_, i) => (i * 7 + b * 13) % 256));
  return Array.from((await transfer(ex, crops, [0], {batchSize: B})).data);
})"""


def same_crops(batch: int, size: int, channels: int) -> list[np.ndarray]:
    """The crops PAGE_CALLS makes, as (S, S, C) uint8."""
    i = np.arange(size * size * channels)
    return [((i * 7 + b * 13) % 256).astype(np.uint8).reshape(size, size, channels) for b in range(batch)]


def build(work: Path, tiny: bool) -> Path:
    from lordkit.bench.target import reference_config
    from lordkit.config import LordConfig
    from lordkit.export.exporter import export_model
    from lordkit.export.web import add_web
    from lordkit.modeldir import write_random_model

    out = work / "export"
    if (out / "web" / "index.html").is_file():
        return out
    cfg = reference_config(tiny=tiny, img_size=32 if tiny else 64)
    model_dir = write_random_model(work / "model", LordConfig(model=cfg), seed=0, force=True)
    export_model(model_dir, out, torchscript=False, batch_sizes=(1, 8), show=False, progress=False, force=True)
    add_web(out)
    return out


def open_page(browser, url: str) -> dict[str, Any]:
    browser.goto(url)
    state = browser.wait_for("document.body && ['ready', 'error'].includes(document.body.dataset.state) "
                             "&& document.body.dataset.state", timeout_s=120)
    if state != "ready":
        raise RuntimeError(browser.eval("document.getElementById('error').textContent"))
    return browser.eval("({device: window.lordkit.state.ex.device, threads: window.lordkit.state.ex.threads, "
                        "isolated: self.crossOriginIsolated, cores: navigator.hardwareConcurrency})")


def screenshot(path: Path, export: Path, data: Path, work: Path) -> None:
    """The page after a transfer in a trained export: 4 content images of the dataset, one class
    photo and two class-bank classes."""
    import cv2

    from lordkit.data.store import Dataset
    from lordkit.export.web import Chromium, add_web, serve

    shown = work / "shown"
    if shown.exists():
        shutil.rmtree(shown)
    shutil.copytree(export, shown, ignore=shutil.ignore_patterns("web", "*.pt"))
    add_web(shown)
    ds = Dataset(data)
    rng = np.random.default_rng(3)
    picks = rng.choice(len(ds.images), 5, replace=False)
    files = []
    for k, idx in enumerate(picks):
        files.append(work / f"image{k}.png")
        img = np.asarray(ds.images[idx])
        cv2.imwrite(str(files[-1]), img[..., ::-1] if img.ndim == 3 and img.shape[2] == 3 else img)
    server, url = serve(work)
    try:
        with Chromium(width=1000, height=900) as b:
            open_page(b, url + "shown/web/")
            b.set_files("#contents", files[:4])
            b.set_files("#class-photos", files[4:])
            b.eval("[...document.getElementById('class-bank').options].forEach(o => o.selected = Number(o.value) < 2)")
            b.eval("document.getElementById('run').click()")
            state = b.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
            if state != "done":
                raise RuntimeError(b.eval("document.getElementById('error').textContent"))
            path.parent.mkdir(parents=True, exist_ok=True)
            b.screenshot(path)
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-s", type=float, default=1.0, help="seconds of calls per row per round (at least 2 calls)")
    ap.add_argument("--tiny", action="store_true", help="lordkit.config's tiny model (smoke runs)")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the model and export here")
    ap.add_argument("--screenshot", type=Path, default=None, help="also save a PNG of the page after a transfer")
    ap.add_argument("--screenshot-export", type=Path, default=None, help="trained export shown in the screenshot")
    ap.add_argument("--screenshot-data", type=Path, default=None, help="dataset dir whose images the screenshot uses")
    args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    from lordkit.export.web import Chromium, pinned_version, serve, web_bytes
    from lordkit.runtime import Transfer

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lordkit-web-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    export = build(work, args.tiny)
    cores = os.cpu_count() or 1
    plain, plain_url = serve(export)
    isolated, isolated_url = serve(export, isolated=True)
    result: dict[str, Any] = {"onnxruntime_web": pinned_version(), "web_bytes": web_bytes(export),
                              "model_bytes_fetched": sum((export / f).stat().st_size for f in
                                                         ("content_encoder.opt.onnx", "class_encoder.opt.onnx",
                                                          "generator.opt.onnx", "class_bank.npy")),
                              "tiny": args.tiny, "rows": []}
    try:
        with Chromium() as one, Chromium() as many:
            pages = {"web wasm 1 thread": (one, open_page(one, plain_url + "web/")),
                     "web wasm N threads": (many, open_page(many, isolated_url + "web/"))}
            n_threads = pages["web wasm N threads"][1]["threads"]
            result["page"] = {k: v for k, (_, v) in pages.items()}
            pythons = {f"python {t} thread{'s' if t > 1 else ''}": t for t in sorted({1, min(cores, n_threads)})}
            rows = [*pages, *pythons]
            times: dict[tuple[str, int], list[float]] = {(r, b): [] for r in rows for b in batch_sizes}
            runners = {}
            for name, t in pythons.items():
                for b in batch_sizes:
                    tr = Transfer(export, provider="cpu", threads=t, batch_size=b, warn=lambda line: None)
                    crops = same_crops(b, tr.img_size, tr.channels)
                    tr.transfer(crops, [0])  # warm-up
                    runners[(name, b)] = (tr, crops)
            for rnd in range(args.rounds):
                order = rows[rnd % len(rows):] + rows[:rnd % len(rows)]
                for name in order:
                    for b in batch_sizes:
                        if name in pages:
                            browser = pages[name][0]
                            times[(name, b)] += browser.eval(f"{PAGE_CALLS}({b}, {args.block_s * 1000})")
                        else:
                            tr, crops = runners[(name, b)]
                            t0 = time.perf_counter()
                            while len(times[(name, b)]) < 2 * (rnd + 1) or time.perf_counter() - t0 < args.block_s:
                                t = time.perf_counter()
                                tr.transfer(crops, [0])
                                times[(name, b)].append((time.perf_counter() - t) * 1000)
                print(f"round {rnd + 1}/{args.rounds} done", flush=True)
            for (name, b), ms in times.items():
                median = statistics.median(ms)
                result["rows"].append({"row": name, "batch": b, "calls": len(ms), "median_ms": median,
                                       "img_per_sec": b / (median / 1000)})
            # Agreement of the page with Python on the same crops.
            b = max(batch_sizes)
            page = np.asarray(one.eval(f"{PAGE_OUTPUT}({b})"), np.float32)
            tr, crops = runners[(next(iter(pythons)), b)]
            want = tr.transfer(crops, [0])  # (B, 1, H, W, C)
            page = page.reshape(b, 1, tr.channels, tr.img_size, tr.img_size).transpose(0, 1, 3, 4, 2)
            result["max_abs_err"] = float(np.abs(page - want).max())
    finally:
        for srv in (plain, isolated):
            srv.shutdown()
            srv.server_close()

    for row in result["rows"]:
        print(f"{row['row']:<22} batch {row['batch']:>2}: {row['img_per_sec']:8.1f} img/s "
              f"(median {row['median_ms']:.1f} ms, {row['calls']} calls)")
    print(f"web/: {result['web_bytes'] / 1e6:.1f} MB; model files fetched: {result['model_bytes_fetched'] / 1e6:.1f} MB; "
          f"max abs err page vs python: {result['max_abs_err']:.2e}")
    if args.screenshot:
        if not (args.screenshot_export and args.screenshot_data):
            raise SystemExit("--screenshot needs --screenshot-export and --screenshot-data")
        screenshot(args.screenshot, args.screenshot_export, args.screenshot_data, work)
        print(f"screenshot: {args.screenshot}")

    from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

    print(f"appended to {append_result('web', result, args=args)}")
    return result


if __name__ == "__main__":
    main()
