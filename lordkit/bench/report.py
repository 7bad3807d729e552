"""The result for people and files: the rich table, the load warning, and the JSON (and PNG, when
matplotlib is installed) written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .labels import fmt_num, title

PLOT_HINT = "not drawn: the plot needs matplotlib (pip install 'lordkit[plot]')"  # printed after "plot: "


def results_table(result: dict[str, Any]):
    """One line per (network, backend, batch): latency percentiles, images/s, speed-up, GFLOP/s, % of
    matmul; notes (why a row is missing, compile times, alignment steps) as numbered lines under the
    table, so that the numbers fit an 80-column terminal. A rich renderable."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    heading = title(result)
    networks = list(dict.fromkeys(r["network"] for r in result["rows"]))
    one = len(networks) == 1  # one network: named in the title, so the table fits 80 columns
    if one:
        heading += f"; network: {networks[0]}"
    # Light rules and single spaces between columns: the numbers keep their full width in 80 columns.
    t = Table(title=heading, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    t.caption = "p50 / p99: latency per call in ms (p90 in the JSON); img/s = B / p50; x: img/s over eager's, the reference's"
    for name, justify in (("network", "left"), ("backend", "left"), ("B", "right"), ("p50", "right"),
                          ("p99", "right"), ("img/s", "right"), ("x eager", "right"), ("x ref", "right"),
                          ("GFLOP/s", "right"), ("% matmul", "right"), ("note", "left")):
        if not (one and name == "network"):
            t.add_column(name, justify=justify, no_wrap=True, min_width=None if name == "network" else len(name))

    notes: list[str] = []

    def add_row(*cells: str) -> None:
        *cells_, note = cells
        if note:
            notes.append(note)
            note = f"[{len(notes)}]"
        if one:
            first, backend, *rest = cells_
            cells_ = [first if first == "face align" else backend, *rest]
        t.add_row(*cells_, note)

    last = None
    shown: set[tuple[str, str]] = set()
    for r in result["rows"]:
        if last is not None and r["network"] != last:
            t.add_section()
        last = r["network"]
        if r["status"] != "ok":
            same = [q for q in result["rows"] if (q["network"], q["backend"]) == (r["network"], r["backend"])]
            if all((q["status"], q.get("reason")) == (r["status"], r.get("reason")) for q in same):
                if (r["network"], r["backend"]) in shown:
                    continue  # one line for a backend that is missing at every batch size
                shown.add((r["network"], r["backend"]))
                batch = "all"
            else:
                batch = str(r["batch"])
            add_row(r["network"], r["backend"], batch, *[""] * 7, f"{r['status']}: {r.get('reason', '')}")
            continue
        lat = r["latency_ms"]
        note = f"compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
        add_row(r["network"], r["backend"], str(r["batch"]), fmt_num(lat["p50"]), fmt_num(lat["p99"]), fmt_num(r["img_per_sec"]), f"{r['speedup_vs_eager']:.2f}" if "speedup_vs_eager" in r else "",
                f"{r['speedup_vs_reference']:.2f}" if "speedup_vs_reference" in r else "",
                fmt_num(r["gflops"]) if "gflops" in r else "",
                f"{100 * r['peak_fraction']:.0f}%" if "peak_fraction" in r else "", note)
    a = result.get("alignment")
    if a:
        t.add_section()
        if a["status"] == "ok":
            lat = a["latency_ms"]
            add_row("face align", "dlib", "1", fmt_num(lat["total"]["p50"]),
                    fmt_num(lat["total"]["p99"]), fmt_num(a["img_per_sec"]), "", "", "", "",
                    f"dlib + OpenCV: detect {lat['detect']['p50']:.1f}, landmarks {lat['landmarks']['p50']:.2f}, "
                    f"warp {lat['warp']['p50']:.2f} ms ({a['image']}, upsample {a['detect_upsample']})")
        else:
            add_row("face align", "", "", *[""] * 7, f"missing: {a['reason']}")
    if not notes:
        return t
    return Group(t, Text("\n".join(f"[{i}] {note}" for i, note in enumerate(notes, 1)), style="dim"))


def load_warning(result: dict[str, Any]) -> str | None:
    """A line when other processes took CPU time while the rows were timed (the timings are then
    disturbed): more than a quarter of the machine's CPU time by others (from /proc/stat; load
    averages cannot tell this run's own earlier work from others'), or a matmul rate that fell
    between the start and the end of the run."""
    env, mm = result["env"], result.get("matmul") or {}
    share = env.get("others_cpu_share")
    first, last = (mm.get("gflops_start") or {}), (mm.get("gflops_end") or {})
    drops = [last[k] / v for k, v in first.items() if v and last.get(k)]
    fell = drops and min(drops) < 0.85
    if (share is not None and share > 0.25) or fell:
        parts = []
        if share is not None:
            parts.append(f"other processes used {100 * share:.0f}% of the machine's CPU time while the rows were timed")
        if fell:
            parts.append(f"the matmul rate was {100 * (1 - min(drops)):.0f}% lower at the end than at the start")
        return ("; ".join(parts) + ": these timings are pessimistic and noisy (multi-threaded PyTorch most of all)")
    return None


def write_results(result: dict[str, Any], out_dir: str | Path, stem: str) -> tuple[Path, Path | None]:
    """`<stem>.json` (the whole result) and `<stem>.png` (the plot) in out_dir, written atomically;
    the PNG's path is None when matplotlib is not installed (PLOT_HINT says what to install)."""
    from lordkit.fsutil import atomic_write_bytes, atomic_write_text

    from .plot import plot_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    atomic_write_text(json_path, json.dumps(result, indent=2, default=_json_default) + "\n")
    png = plot_png(result)
    if png is None:
        return json_path, None
    atomic_write_bytes(png_path, png)
    return json_path, png_path


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
