"""The "torch" backend: an export's AOTInductor packages (`<network>.pt2`, `lordkit export --aoti`).

Each package is the network compiled ahead of time to native code (CPU, or CUDA kernels when it was
exported on a GPU; the manifest's `aoti_device` says which), loaded with torch's package loader.
Unlike the other backends this one needs torch (the `train` extra), imported only when it opens an
export: the runtime stays importable without torch. A package runs on the device it
was compiled for: a CUDA package with `provider="cpu"`, or on a machine where torch sees no GPU, is
refused with one line.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from lordkit import export_format as fmt
from lordkit.errors import LordkitError, Unsupported
from lordkit.runtime.session import PROVIDER_NAMES, PROVIDERS, Device


def _device(bundle, provider: str) -> Device:
    import torch

    compiled_for = bundle.manifest.get("aoti_device") or "cpu"
    name = (provider or "auto").strip().lower()
    device_id = 0
    if name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit():
        device_id, name = int(name[5:]), "cuda"
    if name not in PROVIDERS:
        raise LordkitError(f"unknown provider {provider!r}; use one of: {', '.join(PROVIDER_NAMES)}")
    if compiled_for == "cuda":
        if name == "cpu":
            raise Unsupported(f"the .pt2 packages of {bundle.path} were compiled for CUDA; they do not run on the "
                              "CPU (re-export with --aoti-device cpu, or use --backend onnxruntime)")
        if not torch.cuda.is_available():
            raise Unsupported(f"the .pt2 packages of {bundle.path} were compiled for CUDA and this torch sees no GPU")
        return Device("cuda", device_id)
    if name == "cuda":
        raise Unsupported(f"the .pt2 packages of {bundle.path} were compiled for the CPU; re-export with "
                          "--aoti-device cuda on a GPU machine, or use --provider cpu")
    return Device("cpu")


def _load(path: Path, device_index: int):
    """torch's loader for an AOTInductor package, its notices silenced, its errors one line."""
    import logging
    import warnings

    import torch

    logger = logging.getLogger("torch._inductor.package")  # "outdated pt2 file" before it refuses one
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch._inductor.aoti_load_package(str(path), device_index=device_index)
    except Exception as e:  # torch raises RuntimeError or zipfile errors on a broken package
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LordkitError(f"cannot load AOTInductor package {path}: {first}") from None
    finally:
        logger.setLevel(level)


class AotiModel:
    """One network's AOTInductor package: named float32 numpy inputs in, its output as float32 numpy."""

    io_binding = False

    def __init__(self, path: Path, network: str, device: Device):
        import torch

        self.path = Path(path)
        self.device = device
        self.input_names = list(fmt.NETWORK_IO[network][0])
        self._torch = torch
        self._device = torch.device(str(device))
        self._package = _load(self.path, device.device_id if device.kind == "cuda" else -1)
        meta = self._package.get_metadata()  # the strings lordkit export stamped on the package
        if meta.get(fmt.META_FORMAT) != fmt.FORMAT:
            raise LordkitError(f"not a lordkit export: {self.path.name} came from another tool (no lordkit metadata)")
        if meta.get(fmt.META_NETWORK) != network:
            raise LordkitError(f"files disagree with the manifest: {self.path.name} holds the "
                               f"{meta.get(fmt.META_NETWORK)} network, not {network}")
        self._lock = threading.Lock()  # one run at a time per loaded package

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {sorted(missing)}")
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.float32)).to(self._device)
                for n in self.input_names]
        with self._lock, torch.inference_mode():
            out = self._package(*args)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.detach().to("cpu", torch.float32).numpy()


def open_torch(bundle, *, provider: str, precision: str, threads: int | None,
               warn: Callable[[str], None]) -> dict[str, AotiModel]:
    """The runtime networks' .pt2 packages of `bundle`, loaded on the device they were compiled for."""
    try:
        import torch
    except ImportError:
        raise Unsupported("the torch backend needs torch: pip install 'torch==2.13.0' 'lordkit[train]'") from None
    if precision != "fp32":
        raise Unsupported(f"the torch backend runs the fp32 .pt2 packages, not {precision}")
    device = _device(bundle, provider)
    if threads is not None:
        if int(threads) < 1:
            raise LordkitError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))  # the packages' CPU code runs on torch's intra-op pool
    from lordkit.export_format import RUNTIME_NETWORKS

    return {network: AotiModel(bundle.file_path(network, "aoti"), network, device) for network in RUNTIME_NETWORKS}
