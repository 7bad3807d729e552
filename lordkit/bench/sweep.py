"""onnxruntime CPU settings changed one at a time on one ONNX file: what each is worth (docs/bench.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .machine import ORT_CPU, ort_session_options
from .timing import percentile_ms, time_calls


def ort_settings_sweep(path: str | Path, inputs: dict[str, np.ndarray], threads: int, *, warmup: int = 2,
                       iters: int = 10, max_time_s: float = 20.0) -> list[dict[str, Any]]:
    """Latency of one ONNX file under onnxruntime CPU settings, changed one at a time from the default
    (optimisation level all, `threads` intra-op threads, spinning on)."""
    path = Path(path)
    settings = [("default (all, spinning)", dict(level="all")), ("optimisation: disable", dict(level="disable")),
                ("optimisation: basic", dict(level="basic")), ("optimisation: extended", dict(level="extended")),
                ("no spinning", dict(level="all", spinning=False))]
    settings += [(f"{n} thread{'s' if n > 1 else ''}", dict(level="all", threads=n)) for n in range(1, threads)]
    rows = []
    import onnxruntime as ort

    for label, kw in settings:
        n = kw.pop("threads", threads)
        sess = ort.InferenceSession(str(path), ort_session_options(n, **kw), providers=[ORT_CPU])
        out = sess.get_outputs()[0].name
        times, _ = time_calls(lambda: sess.run([out], inputs), lambda: None, warmup=warmup, iters=iters,
                              max_time_s=max_time_s)
        lat = percentile_ms(times)
        batch = next(iter(inputs.values())).shape[0]
        rows.append({"setting": label, "threads": n, "latency_ms": lat, "img_per_sec": batch / (lat["p50"] / 1e3)})
    return rows
