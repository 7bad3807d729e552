"""The cost of `latent.class_moments`' term per training step: lordkit.losses.class_moment_penalty, one
call with its backward pass, against the reference formulation (every reference row in the per-class
sums, as the term was first written), side by side in one process, calls interleaved.

For each shape (content dimension, classes, batch): a table of --rows codes, a --sample-row reference
sample (the trainer's cap on larger tables), a batch of rows; both functions get the same inputs, and
their values and gradients are checked to agree before timing. The figure per row is the median of
--repeats calls, and the ratio reference / lordkit. The table is printed, and the run appended as one
JSON line to benchmarks/results/class_moments.jsonl (benchmarks/_results.py; LORDKIT_RESULTS_DIR=DIR
elsewhere).

    python benchmarks/class_moments.py                       # the three shapes below, 2 threads
    python benchmarks/class_moments.py --threads 1 --repeats 3 --shapes 8x10x16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import Tensor

from lordkit.losses import class_gaps, class_moment_penalty, pooled_codes

SHAPES = "8x10x16,128x10x128,128x1000x128"  # content dim x classes x batch: small preset, wide, many classes


def reference_penalty(live: Tensor, idx: Tensor, table: Tensor, class_ids: Tensor,
                      reference: Tensor | None = None) -> Tensor:
    """The term with every reference row in the per-class sums (rows of classes outside the batch
    contribute zeros there): the same value as class_moment_penalty, at N x K x D x D cost."""
    z, y, mean, cov, scale = pooled_codes(live, idx, table, class_ids, reference)
    return class_gaps(z, y, torch.unique(class_ids[idx]), mean, cov, scale, like=live)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """"DxCxB,..." as (content dim, classes, batch) triples."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--shapes wants DIMxCLASSESxBATCH items of positive integers, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def one_call(fn: Callable[..., Tensor], live: Tensor, *args: Tensor) -> tuple[float, Tensor, Tensor]:
    """Seconds for one call with its backward pass; the value and live's gradient."""
    x = live.detach().clone().requires_grad_()
    t0 = time.perf_counter()
    value = fn(x, *args)
    if value.requires_grad:  # not when no class of the batch has two codes: the term is a constant 0
        value.backward()
    return time.perf_counter() - t0, value.detach(), x.grad if x.grad is not None else torch.zeros_like(x)


def measure(dim: int, n_classes: int, batch: int, rows: int, sample: int, repeats: int, seed: int) -> dict[str, Any]:
    """One shape: median milliseconds of each function, their ratio, and how far their results differ."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, dim, generator=g)
    class_ids = torch.randint(0, n_classes, (rows,), generator=g)
    idx = torch.randperm(rows, generator=g)[:batch]
    reference = torch.randperm(rows, generator=g)[:min(sample, rows)]
    live = table[idx] + 0.1 * torch.randn(batch, dim, generator=g)
    args = (idx, table, class_ids, reference)
    _, v_ref, g_ref = one_call(reference_penalty, live, *args)  # warm-up, and the results to agree on
    _, v_new, g_new = one_call(class_moment_penalty, live, *args)
    if not (torch.allclose(v_ref, v_new, rtol=1e-4, atol=1e-6) and torch.allclose(g_ref, g_new, rtol=1e-3, atol=1e-6)):
        raise AssertionError(f"the two formulations disagree at {dim}x{n_classes}x{batch}: {v_ref} vs {v_new}")
    times: dict[str, list[float]] = {"reference": [], "lordkit": []}
    for _ in range(repeats):
        times["reference"].append(one_call(reference_penalty, live, *args)[0])
        times["lordkit"].append(one_call(class_moment_penalty, live, *args)[0])
    ref_ms, new_ms = (1000 * statistics.median(times[k]) for k in ("reference", "lordkit"))
    return {"content_dim": dim, "classes": n_classes, "batch": batch, "rows": rows, "sample": len(reference),
            "reference_ms": ref_ms, "lordkit_ms": new_ms, "ratio": ref_ms / new_ms,
            "value_rel_diff": float((v_ref - v_new).abs() / v_ref.abs().clamp_min(1e-12))}


def main(argv: list[str] | None = None, *, record: bool = False) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=SHAPES, help=f"DIMxCLASSESxBATCH items, comma-separated (default {SHAPES}).")
    ap.add_argument("--rows", type=int, default=20_000, help="Rows of the content table.")
    ap.add_argument("--sample", type=int, default=4096, help="Reference rows (the trainer samples 4,096).")
    ap.add_argument("--repeats", type=int, default=7, help="Timed calls per function and shape (median).")
    ap.add_argument("--threads", type=int, default=2, help="torch threads.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(str(e))
    if min(args.rows, args.sample, args.repeats, args.threads) < 1:
        ap.error("--rows, --sample, --repeats and --threads must be >= 1")
    if max(b for _, _, b in shapes) > args.rows:
        ap.error(f"a batch cannot be larger than the table: --rows {args.rows}")
    torch.set_num_threads(args.threads)
    rows = [measure(d, c, b, args.rows, args.sample, args.repeats, args.seed) for d, c, b in shapes]
    print(f"class_moment_penalty, one call with backward, {args.threads} thread(s), {args.rows:,} rows, "
          f"{min(args.sample, args.rows):,} sampled")
    print("| content dim | classes | batch | reference ms | lordkit ms | reference / lordkit |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['content_dim']} | {r['classes']:,} | {r['batch']} | {r['reference_ms']:.1f} | "
              f"{r['lordkit_ms']:.1f} | {r['ratio']:.1f}x |")
    figures = {"threads": args.threads, "rows": rows}
    if record:
        from _results import append_result  # benchmarks/_results.py, found beside this script when it runs as one

        print(f"appended to {append_result('class_moments', figures, args=args, argv=argv)}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:], record=True)
