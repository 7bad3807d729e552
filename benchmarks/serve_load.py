"""Load test of `lordkit serve`: throughput against the in-process runtime, batching gain, latency, soak.

A random model of the reference size (LordConfig's model defaults at 64 px, built with
lordkit.modeldir.write_random_model and exported with lordkit.export.exporter.export_model through
lordkit.bench.target.reference_export) is served on 127.0.0.1; closed-loop client threads each send
one 64 px PNG with class_id=0 and wait for the PNG answer, as fast as they can.

Rows:
- in-process: lordkit.runtime.Transfer doing the same work as the server in one thread per batch
  of --max-batch images: decode the PNG files, encode, generate, encode PNGs (and, for reference,
  the networks alone on ready arrays);
- serve: the server at --max-batch, with --clients concurrent clients, and again at --max-batch 1
  (the batching gain);
- soak (--soak-s > 0): an open-loop schedule at --rate-fraction of the measured serve throughput
  for --soak-s seconds: errors, latency from each request's scheduled time, and the server's
  resident memory (VmRSS from /proc/<pid>/status) over time.

The clients run in this process on the same CPU as the server, as most single-box load tests do;
their HTTP work is part of what the CPU spends. Needs torch for the random model (or --model) and
the serve extra: pip install -e '.[train,serve]'

    python benchmarks/serve_load.py                               # random reference model, 20 s per row
    python benchmarks/serve_load.py --soak-s 300 --rate-fraction 0.8
    python benchmarks/serve_load.py --model EXPORT --clients 32 --duration-s 60

Each run writes benchmarks/results/serve-load-<time>.json (--out) and, run as a script, appends its
figures (without the memory samples) as one line to benchmarks/results/serve_load.jsonl
(benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR appends to DIR/serve_load.jsonl instead).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
KEEP_ALIVE_REUSE_S = 4.0  # uvicorn closes idle keep-alive connections after 5 s


# -- the model and the inputs ----------------------------------------------------------------------


def build_export(work_dir: Path, img_size: int) -> Path:
    """The random reference-size model, exported (reused when work_dir already holds it)."""
    from lordkit.bench.target import reference_config, reference_export
    from lordkit.export_format import MANIFEST

    if (work_dir / "export" / MANIFEST).is_file():
        print(f"reusing the export in {work_dir / 'export'}", file=sys.stderr)
        return work_dir / "export"
    print(f"exporting a random {img_size} px model of the reference size (a minute or two)", file=sys.stderr)
    _, export, _ = reference_export(work_dir, reference_config(img_size), fp16=False, int8=False, progress=False)
    return export


def smooth_images(n: int, size: int, seed: int = 0) -> list[bytes]:
    """n PNGs of smooth random colour fields (photo-like PNG sizes, unlike white noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        out.append(cv2.imencode(".png", img)[1].tobytes())
    return out


def multipart(png: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="c.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + png + (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="class_id"\r\n\r\n0\r\n--{boundary}--\r\n').encode()
    return body, f"multipart/form-data; boundary={boundary}"


# -- in-process reference ----------------------------------------------------------------------------


def in_process(export: Path, pngs: list[bytes], batch: int, threads: int | None, seconds: float) -> dict:
    """images/s of Transfer on the same work as a request (files in, PNG bytes out), and of the networks alone."""
    import cv2

    from lordkit.runtime import Transfer, to_uint8_image

    t = Transfer(export, provider="cpu", threads=threads, batch_size=batch, warn=None)
    with tempfile.TemporaryDirectory(prefix="lordkit-serve-load-") as tmp:
        paths = []
        for k in range(batch):
            paths.append(Path(tmp) / f"c{k}.png")
            paths[-1].write_bytes(pngs[k % len(pngs)])

        def end_to_end() -> None:
            out = t.transfer(paths, [0])  # (B, 1, H, W, C)
            for img in out[:, 0]:
                cv2.imencode(".png", np.ascontiguousarray(to_uint8_image(img)[..., ::-1]),
                             [cv2.IMWRITE_PNG_COMPRESSION, 1])

        arrays = [t.prepare(p)[0].image for p in paths]

        def networks_only() -> None:
            t.transfer(arrays, [0])

        rows = {}
        for name, fn in (("end_to_end", end_to_end), ("networks_only", networks_only)):
            fn()  # warm-up
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                fn()
                n += batch
            rows[name] = n / (time.perf_counter() - t0)
    return {"batch": batch, "img_per_sec": rows["end_to_end"], "networks_img_per_sec": rows["networks_only"]}


# -- the server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, export: Path, max_batch: int, max_wait_ms: float, threads: int | None, queue: int,
                 log_path: Path):
        self.port = free_port()
        args = [sys.executable, "-m", "lordkit", "serve", "--model", str(export), "--port", str(self.port),
                "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue", str(queue),
                "--no-access-log"]
        if threads:
            args += ["--threads", str(threads)]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; see {log_path}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"the server did not get ready; see {log_path}")

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def batch_rows(self) -> dict[str, float]:
        """Mean rows per onnxruntime call so far, per network (from /metrics)."""
        text = self.get("/metrics")[1].decode()
        sums, counts = {}, {}
        for line in text.splitlines():
            for kind, table in (("_sum", sums), ("_count", counts)):
                prefix = f"lordkit_batch_size{kind}{{network=\""
                if line.startswith(prefix):
                    network = line[len(prefix):].split('"')[0]
                    table[network] = float(line.rsplit(" ", 1)[1])
        return {n: sums[n] / counts[n] for n in sums if counts.get(n)}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self.log.close()
        return code


class Client(threading.Thread):
    """Sends requests on one keep-alive connection; records (end time, latency s, status)."""

    def __init__(self, port: int, bodies: list[tuple[bytes, str]], stop: threading.Event, k: int):
        super().__init__(daemon=True)
        self.port, self.bodies, self.stop, self.k = port, bodies, stop, k
        self.records: list[tuple[float, float, int]] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        i = self.k
        while not self.stop.is_set():
            body, ctype = self.bodies[i % len(self.bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/transfer", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                r.read()
                status = r.status
            except OSError:
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            t1 = time.perf_counter()
            self.records.append((t1, t1 - t0, status))
        conn.close()


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": float("nan"), "p99": float("nan")}
    a = np.asarray(latencies) * 1000.0
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99))}


def closed_loop(server: ServerProcess, bodies, clients: int, warmup_s: float, seconds: float) -> dict:
    stop = threading.Event()
    threads = [Client(server.port, bodies, stop, k) for k in range(clients)]
    for c in threads:
        c.start()
    time.sleep(warmup_s)
    t0 = time.perf_counter()
    time.sleep(seconds)
    t1 = time.perf_counter()
    stop.set()
    for c in threads:
        c.join(120)
    window = [r for c in threads for r in c.records if t0 <= r[0] < t1]
    ok = [r for r in window if r[2] == 200]
    return {"clients": clients, "seconds": t1 - t0, "requests": len(window), "errors": len(window) - len(ok),
            "img_per_sec": len(ok) / (t1 - t0), "latency_ms": percentiles_ms([r[1] for r in ok]),
            "mean_batch_rows": server.batch_rows()}


def soak(server: ServerProcess, bodies, rate: float, seconds: float, sample_s: float = 5.0) -> dict:
    """Open loop: request k is due at t0 + k / rate; latency counts from when it was due."""
    n_total = int(rate * seconds)
    records: list[tuple[float, int]] = []
    lock = threading.Lock()
    local = threading.local()

    failures: dict[str, int] = {}

    def one(k: int, due: float) -> None:
        conn = getattr(local, "conn", None)
        if conn is not None and time.perf_counter() - local.last_used > KEEP_ALIVE_REUSE_S:
            conn.close()  # the server has closed it, or is about to: never send on a stale connection
            conn = None
        conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        local.conn = conn
        body, ctype = bodies[k % len(bodies)]
        try:
            conn.request("POST", "/v1/transfer", body=body, headers={"Content-Type": ctype})
            r = conn.getresponse()
            r.read()
            status = r.status
        except OSError as e:
            status = 0
            conn.close()
            local.conn = None
            with lock:
                failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
        local.last_used = time.perf_counter()
        with lock:
            records.append((time.perf_counter() - due, status))

    rss: list[tuple[float, float]] = []
    with ThreadPoolExecutor(64) as pool:
        t0 = time.perf_counter()
        next_sample = t0
        for k in range(n_total):
            due = t0 + k / rate
            while (now := time.perf_counter()) < due:
                if now >= next_sample:
                    rss.append((now - t0, server.rss_mb()))
                    next_sample += sample_s
                time.sleep(min(due - now, 0.01))
            pool.submit(one, k, due)
    rss.append((time.perf_counter() - t0, server.rss_mb()))
    ok = [lat for lat, status in records if status == 200]
    # Growth after the first tenth (allocator pools and caches fill early), and over the whole run.
    settled = [m for t, m in rss if t >= seconds / 10] or [rss[-1][1]]
    return {"seconds": seconds, "rate_per_sec": rate, "requests": len(records), "errors": len(records) - len(ok),
            "connection_failures": failures,
            "statuses": {str(s): sum(1 for _, st in records if st == s) for s in sorted({st for _, st in records})},
            "latency_ms": percentiles_ms(ok), "rss_mb_start": rss[0][1], "rss_mb_settled": settled[0],
            "rss_mb_end": rss[-1][1], "rss_mb_max": max(m for _, m in rss),
            "rss_growth_after_settling_mb": rss[-1][1] - settled[0], "rss_samples": rss}


# -- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, *, record: bool = False) -> dict:
    """Run the load test; `record`: also append the figures to the result file (what the script does)."""
    from lordkit.bench.machine import cpu_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="export dir (default: a random reference-size model)")
    ap.add_argument("--work-dir", type=Path, default=None, help="build the random model here and reuse it")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads, server and in-process alike")
    ap.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per row")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--soak-s", type=float, default=0.0, help="soak length (0: no soak)")
    ap.add_argument("--rate-fraction", type=float, default=0.8, help="soak rate as a fraction of serve throughput")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="lordkit-serve-load-")
    work = args.work_dir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    export = args.model or build_export(work, args.img_size)
    pngs = smooth_images(64, args.img_size)
    bodies = [multipart(p) for p in pngs]
    result: dict = {"kind": "lordkit-serve-load/1", "time": datetime.now().isoformat(timespec="seconds"),
                    "cpu": cpu_model(), "n_cpus": os.cpu_count(), "python": platform.python_version(),
                    "export": str(export), "settings": vars(args) | {"model": str(args.model), "work_dir": str(work),
                                                                     "out": str(args.out)}}

    print(f"in-process Transfer at batch {args.max_batch} ...", file=sys.stderr)
    result["in_process"] = in_process(export, pngs, args.max_batch, args.threads, args.duration_s)

    runs = {}
    for max_batch in (args.max_batch, 1):
        print(f"serve --max-batch {max_batch}, {args.clients} clients ...", file=sys.stderr)
        server = ServerProcess(export, max_batch, args.max_wait_ms, args.threads, 4 * args.clients,
                               work / f"server-b{max_batch}.log")
        try:
            runs[max_batch] = closed_loop(server, bodies, args.clients, args.warmup_s, args.duration_s)
            runs[max_batch]["rss_mb"] = server.rss_mb()
            if max_batch == args.max_batch and args.soak_s > 0:
                rate = args.rate_fraction * runs[max_batch]["img_per_sec"]
                print(f"soak: {rate:.1f} requests/s for {args.soak_s:.0f} s ...", file=sys.stderr)
                result["soak"] = soak(server, bodies, rate, args.soak_s)
        finally:
            runs[max_batch]["exit_status"] = server.stop()
    result["serve"] = runs[args.max_batch]
    result["serve_batch1"] = runs[1]
    result["serve_vs_in_process"] = runs[args.max_batch]["img_per_sec"] / result["in_process"]["img_per_sec"]
    result["batching_gain"] = runs[args.max_batch]["img_per_sec"] / max(runs[1]["img_per_sec"], 1e-9)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"serve-load-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"results: {path}")
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        figures = {**result, "json": str(path)}
        if "soak" in result:
            figures["soak"] = {k: v for k, v in result["soak"].items() if k != "rss_samples"}
        print(f"appended to {append_result('serve_load', figures, args=args, argv=argv)}")
    tmp.cleanup()
    return result


def print_table(r: dict) -> None:
    ip, s, s1 = r["in_process"], r["serve"], r["serve_batch1"]
    b = r["settings"]["max_batch"]
    print(f"CPU: {r['cpu']} ({r['n_cpus']} logical CPUs)")
    print(f"{'row':<44} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  mean rows per call")
    print(f"{f'in-process Transfer, batch {b} (files -> PNGs)':<44} {ip['img_per_sec']:8.1f}")
    print(f"{f'in-process Transfer, batch {b} (networks only)':<44} {ip['networks_img_per_sec']:8.1f}")
    for label, run in ((f"serve --max-batch {b}, {s['clients']} clients", s),
                       (f"serve --max-batch 1, {s1['clients']} clients", s1)):
        rows = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run["mean_batch_rows"].items()))
        print(f"{label:<44} {run['img_per_sec']:8.1f} {run['latency_ms']['p50']:8.1f} "
              f"{run['latency_ms']['p99']:8.1f} {run['errors']:7d}  {rows}")
    print(f"serve / in-process: {100 * r['serve_vs_in_process']:.0f}%; "
          f"batching gain over --max-batch 1: {r['batching_gain']:.2f}x")
    if "soak" in r:
        k = r["soak"]
        print(f"soak {k['seconds']:.0f} s at {k['rate_per_sec']:.1f} req/s: {k['requests']} requests, "
              f"{k['errors']} errors, p50 {k['latency_ms']['p50']:.1f} ms, p99 {k['latency_ms']['p99']:.1f} ms; "
              f"server RSS {k['rss_mb_start']:.0f} MB at start, {k['rss_mb_settled']:.0f} MB settled, "
              f"{k['rss_mb_end']:.0f} MB at end ({k['rss_growth_after_settling_mb']:+.1f} MB after settling), "
              f"max {k['rss_mb_max']:.0f} MB")


if __name__ == "__main__":
    main(record=True)
