"""Backends opened for timing: seeded inputs per network, the Runner of one backend and network
(onnxruntime, TorchScript, AOTInductor packages, eager PyTorch and its compiled / half-precision forms), where each
backend's network comes from (Sources: the export's files, the model dir's eager modules), and the
check that a model dir is the one an export was made from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lordkit.errors import LordkitError
from lordkit.export_format import NETWORK_IO, NETWORKS, tensor_shape

from .machine import ORT_CPU, ORT_CUDA, has_module, ort_session_options

TORCH_BACKENDS = ("reference", "eager", "compile", "torch-fp16", "torch-bf16")  # built from the model dir's nn.Modules
# The export file each onnxruntime backend opens (a key of the manifest's `files`).
ORT_FILES = {"ort-cpu": "onnx", "ort-cpu-opt": "onnx_opt", "fp16": "onnx_fp16", "int8": "onnx_int8",
             "ort-cuda": "onnx", "ort-cuda-fp16": "onnx_fp16"}
# How to get a file an export lacks.
MISSING_FILE_HINTS = {"onnx_fp16": "re-export with --fp16", "onnx_int8": "quantize it: lordkit export --int8 "
                      "(lordkit.export.quantize.quantize_export)", "torchscript": "re-export with --torchscript",
                      "onnx_opt": "re-export with --onnx", "onnx": "re-export with --onnx", "aoti": "re-export with --aoti"}


# The precision each OpenVINO row runs (lordkit.runtime.openvino: its file and inference hint).
OV_PRECISIONS = {"ov-cpu": "fp32", "ov-bf16": "bf16", "ov-int8": "int8"}


def make_inputs(network: str, batch: int, img_size: int, channels: int, content_dim: int, class_dim: int,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs as the exporter's parity check draws them: images uniform in [0, 1], codes N(0, 1)."""
    rng = np.random.default_rng([seed, NETWORKS.index(network), batch])
    out = {}
    for name in NETWORK_IO[network][0]:
        shape = tensor_shape(name, batch, img_size, channels, content_dim, class_dim)
        out[name] = rng.random(shape, dtype=np.float32) if len(shape) == 4 else rng.standard_normal(shape, dtype=np.float32)
    return out


class Unavailable(Exception):
    """A backend that cannot run here: the row is reported as missing with this one-line reason."""


@dataclass
class Runner:
    """One opened backend for one network: prepare(inputs) returns the zero-argument call to time for a batch."""

    prepare: Callable[[dict[str, np.ndarray]], Callable[[], Any]]
    sync: Callable[[], None]
    device: str
    file: str | None = None
    open_s: float = 0.0
    compile: bool = False  # torch.compile: the first call of each shape compiles (timed apart)
    info: dict[str, Any] = field(default_factory=dict)


def _ort_runner(path: Path, providers: list, threads: int, *, device: str, io_binding: bool,
                level: str = "all") -> Runner:
    import onnxruntime as ort

    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(path), ort_session_options(threads, level), providers=providers)
    except Exception as e:  # onnxruntime raises its own types (Fail, InvalidGraph, NotImplemented)
        raise Unavailable(f"onnxruntime cannot open {path.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    open_s = time.perf_counter() - t0
    if device == "cuda" and sess.get_providers()[0] != ORT_CUDA:
        raise Unavailable("onnxruntime's CUDA provider did not start (CUDA or cuDNN libraries missing?)")
    out_name = sess.get_outputs()[0].name

    def prepare(inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        if not io_binding:
            return lambda: sess.run([out_name], inputs)
        # Inputs copied to the device once; the output is allocated on the device by onnxruntime and
        # stays there: the time is the network's, not the PCIe link's.
        binding = sess.io_binding()
        kept = []
        for name, arr in inputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0)
            kept.append(value)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(out_name, device, 0)

        def step() -> None:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()
            _ = kept

        return step

    return Runner(prepare, lambda: None, device, path.name, open_s,
                  info={"providers": sess.get_providers(), "io_binding": io_binding, "graph_optimization": level})


def _torch_sync(device) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _torch_runner(module, device_name: str, dtype_name: str = "fp32", *, compile: bool = False,
                  file: str | None = None, open_s: float = 0.0) -> Runner:
    import torch

    device = torch.device(device_name)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    module = module.to(device=device, dtype=dtype).eval() if dtype_name != "fp32" else module.to(device).eval()
    fn = torch.compile(module, dynamic=False) if compile else module

    def prepare(inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        args = [torch.from_numpy(x).to(device=device, dtype=dtype) for x in inputs.values()]

        def step() -> Any:
            with torch.inference_mode():
                return fn(*args)

        return step

    return Runner(prepare, _torch_sync(device), str(device), file, open_s, compile=compile,
                  info={"dtype": dtype_name, "threads": torch.get_num_threads() if device.type == "cpu" else None})



def _aoti_runner(path: Path, device_name: str) -> Runner:
    """An AOTInductor package on the device it was compiled for (inputs copied there once per batch shape)."""
    import torch

    from lordkit.export.aoti import load_aoti

    device = torch.device(device_name)
    t0 = time.perf_counter()
    package = load_aoti(path)
    open_s = time.perf_counter() - t0

    def prepare(inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        args = [torch.from_numpy(x).to(device) for x in inputs.values()]

        def step() -> Any:
            with torch.inference_mode():
                return package(*args)

        return step

    return Runner(prepare, _torch_sync(device), str(device), path.name, open_s,
                  info={"threads": torch.get_num_threads() if device.type == "cpu" else None})


def _openvino_runner(path: Path, precision: str, threads: int) -> Runner:
    """One ONNX file compiled by OpenVINO's CPU plugin as lordkit.runtime.openvino compiles it."""
    if not has_module("openvino"):
        raise Unavailable("openvino is not installed (pip install 'lordkit[openvino]')")
    from lordkit.errors import Unsupported
    from lordkit.runtime.openvino import compile_file, new_core

    try:
        core = new_core(precision)
    except Unsupported as e:  # bf16 on a CPU without it
        raise Unavailable(str(e)) from None
    t0 = time.perf_counter()
    compiled = compile_file(core, path, precision, threads)
    open_s = time.perf_counter() - t0
    request = compiled.create_infer_request()

    def prepare(inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        # Inputs read in place, the output copied into a new array: what the runtime's model does per call.
        return lambda: request.infer(inputs, share_inputs=True)

    return Runner(prepare, lambda: None, "cpu", path.name, open_s,
                  info={"inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
                        "streams": compiled.get_property("NUM_STREAMS"), "threads": threads})


class Sources:
    """Where each backend's network comes from: the export's files and (optionally) the model dir."""

    def __init__(self, export_dir: Path, manifest: dict[str, Any], model_dir: Path | None, threads: int,
                 torch_device: str, io_binding: bool | None, model_dir_note: str | None):
        self.export_dir, self.manifest, self.model_dir = export_dir, manifest, model_dir
        self.threads, self.torch_device, self.io_binding = threads, torch_device, io_binding
        self.model_dir_note = model_dir_note
        self._eager: dict[str, Any] | None = None
        self._reference: dict[str, Any] | None = None

    def file(self, network: str, key: str) -> Path:
        """The export's file of `network` under a manifest `files` key; Unavailable if it has none."""
        entry = self.manifest.get("models", {}).get(network) or {}
        name = (entry.get("files") or {}).get(key)
        if not name:
            raise Unavailable(f"the export has no {key} file for {network}; {MISSING_FILE_HINTS[key]}")
        path = self.export_dir / name
        if not path.is_file():
            raise Unavailable(f"{name} is listed in manifest.json but missing")
        return path

    def eager_modules(self) -> dict[str, Any]:
        """The model dir's nn.Modules by network name, loaded once."""
        if self.model_dir is None:
            raise Unavailable(self.model_dir_note or "eager PyTorch needs the model dir (--model-dir); an export "
                              "dir holds no eager module")
        if self._eager is None:
            if not has_module("torch"):
                raise Unavailable("torch is not installed")
            from lordkit.modeldir import load_amortized
            from lordkit.models import eager_networks

            self._eager = eager_networks(load_amortized(self.model_dir))
        return self._eager

    def reference_modules(self) -> dict[str, Any]:
        """The same weights in the reference code's formulation (lordkit.bench.reference), by network."""
        self.eager_modules()  # the same checks: a model dir, torch
        if self._reference is None:
            from lordkit.bench.reference import reference_networks
            from lordkit.modeldir import load_amortized, load_config

            cfg = load_config(self.model_dir)
            self._reference = reference_networks(load_amortized(self.model_dir, cfg), cfg.model)
        return self._reference

    def open(self, backend: str, network: str) -> Runner:
        """The Runner of one backend for one network; Unavailable when it cannot run here."""
        import copy

        if backend == "reference":
            return _torch_runner(self.reference_modules()[network], self.torch_device)
        if backend in TORCH_BACKENDS:
            # torch-fp16 / bf16 run on the CPU too when asked for (slowly: not in the CPU default list).
            module = self.eager_modules()[network]
            if backend != "eager":
                module = copy.deepcopy(module)
            dtype = {"torch-fp16": "fp16", "torch-bf16": "bf16"}.get(backend, "fp32")
            return _torch_runner(module, self.torch_device, dtype, compile=backend == "compile")
        if backend == "torchscript":
            if not has_module("torch"):
                raise Unavailable("torch is not installed")
            import warnings

            import torch

            path = self.file(network, "torchscript")
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=self.torch_device)
            return _torch_runner(module, self.torch_device, file=path.name, open_s=time.perf_counter() - t0)
        if backend == "aoti":
            if not has_module("torch"):
                raise Unavailable("torch is not installed")
            import torch

            path = self.file(network, "aoti")
            device = self.manifest.get("aoti_device") or "cpu"
            if device == "cuda" and not torch.cuda.is_available():
                raise Unavailable(f"{path.name} was compiled for CUDA and torch sees no GPU")
            return _aoti_runner(path, device)
        if backend in OV_PRECISIONS:
            precision = OV_PRECISIONS[backend]
            return _openvino_runner(self.file(network, "onnx_int8" if precision == "int8" else "onnx"), precision,
                                    self.threads)
        import onnxruntime as ort

        if backend in ("ort-cuda", "ort-cuda-fp16"):
            if ORT_CUDA not in ort.get_available_providers():
                raise Unavailable("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            return _ort_runner(self.file(network, ORT_FILES[backend]), [(ORT_CUDA, {"device_id": 0}), ORT_CPU],
                               self.threads, device="cuda",
                               io_binding=True if self.io_binding is None else self.io_binding)
        return _ort_runner(self.file(network, ORT_FILES[backend]), [ORT_CPU], self.threads, device="cpu",
                           io_binding=bool(self.io_binding))


def check_model_dir(model_dir: Path, export_dir: Path, manifest: dict[str, Any], threads: int) -> str | None:
    """None when the model dir's eager networks give the export's outputs, else why not (one line).

    Compares the content encoder and generator (eager vs the export's .onnx, batch 1, seeded
    inputs) so that eager rows never time a different model from the exported one.
    """
    from lordkit.modeldir import is_model_dir

    if not is_model_dir(model_dir):
        return f"{model_dir} is not a model dir (no config.json)"
    try:
        import onnxruntime as ort
        import torch

        from lordkit.modeldir import load_amortized, load_config
        from lordkit.models import eager_networks

        mc = load_config(model_dir).model
        if (mc.img_size, mc.channels, mc.content_dim, mc.class_dim) != (
                manifest["img_size"], manifest["channels"], manifest["content_dim"], manifest["class_dim"]):
            return f"{model_dir} is a {mc.img_size} px, {mc.content_dim}/{mc.class_dim}-dim model; the export is not"
        nets = eager_networks(load_amortized(model_dir).eval())
        for network in ("content_encoder", "generator"):
            module = nets[network]
            name = manifest["models"][network]["files"].get("onnx")
            if not name:
                continue
            feeds = make_inputs(network, 1, manifest["img_size"], manifest["channels"], manifest["content_dim"],
                                manifest["class_dim"], seed=99)
            sess = ort.InferenceSession(str(export_dir / name), ort_session_options(threads), providers=[ORT_CPU])
            got = sess.run(None, feeds)[0]
            with torch.inference_mode():
                want = module(*(torch.from_numpy(x) for x in feeds.values())).numpy()
            err = float(np.max(np.abs(got - want)))
            if not err < 1e-3:
                return (f"model dir {model_dir} does not match the export ({network}: max abs error {err:.2g}); "
                        "eager rows need the model the export was made from")
    except LordkitError as e:
        return str(e)
    return None

