"""The benchmarks' result files: one JSON object per run, one line each, appended, never rewritten.

`append_result("video", figures, args=args)` adds a line to `benchmarks/results/video.jsonl` (or to
`$LORDKIT_RESULTS_DIR/video.jsonl`, for smoke runs and tests):

    {"date": "2026-12-02T09:14:03Z", "script": "video", "argv": ["--frames", "120"],
     "args": {"frames": 120, ...}, "commit": "0afc9cd...", "machine": {"cpu": "AMD EPYC ...",
     "cpu_flags": ["avx2", ...], "logical_cpus": 2, "physical_cores": 2, ...}, "figures": {...}}

The docs quote the latest line of each file; older lines stay as they were. Each line is written with
one `write` on a file opened for appending (O_APPEND), so two runs that finish at once do not
interleave their lines. Non-finite numbers are written as null (JSON has no NaN).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lordkit.bench.machine import cpu_flags, cpu_model, load_average, physical_cores

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_ENV = "LORDKIT_RESULTS_DIR"  # another directory for the result files (smoke runs, tests)


def results_path(name: str) -> Path:
    """Where the runs of benchmark `name` are appended: `<results dir>/<name>.jsonl`."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS_DIR) / f"{name}.jsonl"


def machine() -> dict[str, Any]:
    """What a reader needs to tell two machines apart: CPU, its instruction sets, cores, libraries."""
    versions = {}
    for module in ("torch", "onnxruntime", "numpy"):
        mod = sys.modules.get(module)
        versions[module] = getattr(mod, "__version__", None) if mod is not None else None
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(), "load_average": load_average(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def _commit() -> str | None:
    """The checkout's commit, with "-dirty" when tracked files differ from it; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _plain(x: Any) -> Any:
    """x as plain JSON values: numpy scalars and arrays, paths, tuples, and non-finite floats (null)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy scalars and arrays
        return _plain(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)  # paths, devices, anything else: its text


def append_result(name: str, figures: dict[str, Any], *, args: argparse.Namespace | dict[str, Any] | None = None,
                  argv: list[str] | None = None) -> Path:
    """Append one run of benchmark `name` (its figures, command line and machine) to its result file;
    returns the file's path."""
    record = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "script": name,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "args": vars(args) if isinstance(args, argparse.Namespace) else (args or {}),
        "commit": _commit(),
        "machine": machine(),
        "figures": figures,
    }
    line = (json.dumps(_plain(record), allow_nan=False, separators=(",", ":")) + "\n").encode()
    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, line)
        while written < len(line):  # a short write (a full disk): finish the line or fail loudly
            written += os.write(fd, line[written:])
    finally:
        os.close(fd)
    return path
