"""Which engine runs an export's networks: onnxruntime (the default), OpenVINO or torch.

Every backend hands `Transfer` the same thing: one model per runtime network, called with the
network's named float32 inputs (numpy) and returning its output as a host float32 numpy array,
with `path` (the file it runs), `device` (a session.Device) and `io_binding` attributes.

- "onnxruntime": the export's ONNX files (fp32, *.opt.onnx, fp16 or int8) on CPU or CUDA.
- "openvino": the same ONNX files read by OpenVINO's CPU plugin (lordkit.runtime.openvino).
- "torch": the export's AOTInductor packages (*.pt2, `lordkit export --aoti`) on the device they
  were compiled for (lordkit.runtime.torch_backend); needs torch, unlike the other two.
"""

from __future__ import annotations

from typing import Any, Callable

from lordkit.errors import BadInput
from lordkit.export_format import RUNTIME_NETWORKS

BACKENDS = ("onnxruntime", "openvino", "torch")
# The precisions each backend runs: onnxruntime the export's fp32 / fp16 / int8 ONNX files; OpenVINO
# the fp32 or int8 ONNX files, fp32 files also computed in bf16 on CPUs that have it; torch the fp32
# AOTInductor packages.
PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "openvino": ("fp32", "bf16", "int8"), "torch": ("fp32",)}


def check_backend(backend: str) -> str:
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise BadInput(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    return name


def check_precision(backend: str, precision: str) -> str:
    allowed = PRECISIONS[check_backend(backend)]
    if precision not in allowed:
        every = sorted({p for ps in PRECISIONS.values() for p in ps})
        if precision in every:
            raise BadInput(f"the {backend} backend runs {', '.join(allowed)}, not {precision}")
        raise BadInput(f"unknown precision {precision!r}; use one of: {', '.join(every)}")
    return precision


def open_backend(bundle, backend: str, *, provider: str, precision: str, optimized: bool, threads: int | None,
                 io_binding: bool | None, warn: Callable[[str], None]) -> dict[str, Any]:
    """One model per runtime network of `bundle`, run by `backend`, each checked against the export contract."""
    backend = check_backend(backend)
    if backend == "openvino":
        from lordkit.runtime.openvino import open_openvino

        return open_openvino(bundle, provider=provider, precision=precision, threads=threads, warn=warn)
    if backend == "torch":
        from lordkit.runtime.torch_backend import open_torch

        return open_torch(bundle, provider=provider, precision=precision, threads=threads, warn=warn)
    from lordkit.runtime.session import check_contract, open_models, select_device

    device = select_device(provider, warn)
    paths = {n: bundle.model_path(n, precision, optimized) for n in RUNTIME_NETWORKS}
    models = open_models(paths, device, threads, io_binding, warn)
    for name, model in models.items():  # metadata can be copied onto any graph: check the graph too
        check_contract(model, name, bundle.img_size, bundle.channels, bundle.content_dim, bundle.class_dim)
    return models
