"""The PNG of a result: per network, p50 latency and images/s against batch size on log axes, one
line per backend. Drawn with matplotlib's Agg canvas (the optional extra lordkit[plot])."""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

from .labels import title

# One colour per backend (matplotlib's tab10, eager in near-black), distinguishable in print.
COLOURS = {
    "reference": "#98df8a", "eager": "#282828", "torchscript": "#1f77b4", "compile": "#e377c2", "torch-fp16": "#7f7f7f",
    "torch-bf16": "#bcbd22", "ort-cpu": "#ff7f0e", "ort-cpu-opt": "#2ca02c", "ort-cuda": "#d62728",
    "ort-cuda-fp16": "#8c564b", "fp16": "#17becf", "int8": "#9467bd",
    "ov-cpu": "#6b6ecf", "ov-bf16": "#b5cf6b", "ov-int8": "#843c39", "aoti": "#aec7e8",
}
PANEL_IN = (5.6, 3.3)  # width, height of one chart in inches (at 100 dpi)
LEGEND_COLUMNS = 6


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    """y limits around the values with a margin, at least a factor 10 wide so that ticks show."""
    lo, hi = min(values) / 1.3, max(values) * 1.3
    if hi / lo < 10:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 3.2, mid * 3.2
    return lo, hi


def _panel(ax, series: dict[str, list[tuple[int, float]]], batch_sizes: Sequence[int], heading: str,
           ylabel: str) -> None:
    """One chart: batch size on a log2 x axis, each backend's points as a line with markers, log y axis."""
    from matplotlib import ticker

    ax.set_title(heading, fontsize=10)
    bs = sorted(batch_sizes)
    ax.set_xscale("log", base=2)
    ax.set_xlim(bs[0] / 1.4, bs[-1] * 1.4)
    ax.xaxis.set_major_locator(ticker.FixedLocator(bs))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter([str(b) for b in bs]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("batch size (log scale)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    values = [v for pts in series.values() for _, v in pts if v > 0]
    if not values:
        ax.text(0.5, 0.5, "no measurements", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_yticks([])
        return
    ax.set_yscale("log")
    ax.set_ylim(*_log_range(values))
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,g}"))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.grid(True, axis="y", color="#e1e1e1", linewidth=0.8)
    for backend, pts in series.items():
        pts = sorted((b, v) for b, v in pts if v > 0)
        ax.plot([b for b, _ in pts], [v for _, v in pts], color=COLOURS.get(backend, "black"), linewidth=2,
                marker="o", markersize=4, label=backend)


def plot_png(result: dict[str, Any]) -> bytes | None:
    """The latency and throughput charts of every network as PNG bytes; None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        return None

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    settings = result["settings"]
    networks = [n for n in settings["networks"] if any(r["network"] == n for r in rows)] or list(settings["networks"])
    backends = [b for b in settings["backends"] if any(r["backend"] == b for r in rows)]
    legend_rows = max(1, math.ceil(len(backends) / LEGEND_COLUMNS))
    header_in = 0.8 + 0.25 * legend_rows  # title, legend rows, the first charts' titles
    fig = Figure(figsize=(2 * PANEL_IN[0], header_in + PANEL_IN[1] * len(networks)), dpi=100)
    FigureCanvasAgg(fig)  # a figure of its own on the Agg canvas: no pyplot, no global backend switch
    fig.suptitle(title(result), x=0.01, y=0.995, ha="left", va="top", fontsize=11)
    if backends:
        handles = [Line2D([], [], color=COLOURS.get(b, "black"), linewidth=2, marker="o", markersize=4)
                   for b in backends]
        fig.legend(handles, backends, loc="upper left", bbox_to_anchor=(0.01, 1 - 0.35 / fig.get_figheight()),
                   ncol=LEGEND_COLUMNS, frameon=False, fontsize=9)
    axes = fig.subplots(len(networks), 2, squeeze=False)
    for (lat_ax, thr_ax), network in zip(axes, networks):
        mine = [r for r in rows if r["network"] == network]
        latency = {b: [(r["batch"], r["latency_ms"]["p50"]) for r in mine if r["backend"] == b] for b in backends}
        throughput = {b: [(r["batch"], r["img_per_sec"]) for r in mine if r["backend"] == b] for b in backends}
        _panel(lat_ax, {b: v for b, v in latency.items() if v}, settings["batch_sizes"],
               f"{network}: latency p50 (ms, log scale)", "ms per call")
        _panel(thr_ax, {b: v for b, v in throughput.items() if v}, settings["batch_sizes"],
               f"{network}: throughput (images/s, log scale)", "images/s")
    height_in = fig.get_figheight()
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.55 / height_in, top=1 - header_in / height_in, wspace=0.2,
                        hspace=0.45)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
