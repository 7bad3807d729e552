"""FLOPs of one call of an ONNX graph, counted from its Conv, ConvTranspose, Gemm and MatMul nodes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

FLOP_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _shape_table(model) -> dict[str, list[int | None]]:
    shapes: dict[str, list[int | None]] = {}
    g = model.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count_flops(model_or_path: Any, batch: int = 1) -> dict[str, Any]:
    """FLOPs of one call at `batch` (2 x multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul).

    Shapes come from onnx.shape_inference with every input's first (batch) axis set to `batch`.
    Bias additions, activations and normalisations are not counted (they are memory-bound and small
    next to the convolutions here). Returns {"flops", "macs", "by_op": {op: flops}, "uncounted": [...]}:
    nodes of those types whose shapes could not be inferred are named in "uncounted".
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else onnx.ModelProto.FromString(
        model_or_path.SerializeToString())
    init_names = {i.name for i in model.graph.initializer}
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name in init_names or not v.type.tensor_type.HasField("shape") or not v.type.tensor_type.shape.dim:
            continue
        dim = v.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.ClearField("dim_param")
            dim.dim_value = int(batch)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shape_table(inferred)

    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in inferred.graph.node:
        if node.op_type not in FLOP_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        macs = None
        if node.op_type in ("Conv", "ConvTranspose"):
            x, w, y = known(node.input[0]), known(node.input[1]), known(node.output[0])
            if x and w and y:
                group = int(attrs.get("group", 1))
                if node.op_type == "Conv":  # w (M, C/group, k...); each output element sums C/group * k... products
                    macs = math.prod(y) * math.prod(w[1:])
                else:  # w (C, M/group, k...); each input element scatters into M/group * k... outputs
                    macs = math.prod(x) * math.prod(w[1:])
                del group  # already folded into w's second axis
        elif node.op_type == "Gemm":
            a, b = known(node.input[0]), known(node.input[1])
            if a and b:
                m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
                n = b[0] if attrs.get("transB", 0) else b[1]
                macs = m * k * n
        else:  # MatMul with numpy broadcasting
            a, b, y = known(node.input[0]), known(node.input[1]), known(node.output[0])
            if a and b and y:
                k = a[-1]
                macs = math.prod(y) * k
        if macs is None:
            uncounted.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    total = sum(by_op.values())
    return {"flops": total, "macs": total // 2, "by_op": by_op, "uncounted": uncounted, "batch": batch}
