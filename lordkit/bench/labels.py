"""Text shared by the table and the plot: how a measured number is written and the run's title line."""

from __future__ import annotations

from typing import Any


def fmt_num(x: float) -> str:
    """Three significant figures or more: 1,234 / 12.3 / 1.23 (thousands separated, whole above 100)."""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def load_text(env: dict[str, Any]) -> str:
    """", other processes N% CPU" (or the load averages when /proc/stat was not readable), else ""."""
    share = env.get("others_cpu_share")
    if share is not None:
        return f", other processes {100 * share:.0f}% CPU"
    loads = [x[0] for x in (env.get("load_average_start"), env.get("load_average_end")) if x]
    return f", load average {' -> '.join(f'{x:.1f}' for x in loads)}" if loads else ""


def title(result: dict[str, Any]) -> str:
    """lordkit bench: model, size, threads, CPU, GPU, the fp32 matmul rate, other processes' share."""
    env, model = result["env"], result["model"]
    peak = ((result.get("matmul") or {}).get("peak") or {}).get("cpu-fp32")
    return (f"lordkit bench: {model.get('model_name') or 'model'} {model['img_size']} px, {env['threads']} threads, "
            f"{env['cpu']}" + (f", {env['gpu']}" if env.get("gpu") else "")
            + (f"; fp32 matmul {peak:.0f} GFLOP/s" if peak else "") + load_text(env))
