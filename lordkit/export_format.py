"""The export contract: names, files and metadata that the exporter writes and everything else reads.

Torch-free (numpy at most) so that the runtime on an edge box, the int8 quantizer, the benchmarks
and the exporter import the same definitions. docs/export-format.md describes the layout for
people; this module is its single definition in code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT = "lordkit-export/1"
MANIFEST = "manifest.json"
CLASS_BANK = "class_bank.npy"

# Name -> (inputs, outputs) of every exported network, in export order.
NETWORK_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "content_encoder": (("image",), ("content_code",)),
    "class_encoder": (("image",), ("class_code",)),
    "generator": (("content_code", "class_code"), ("image",)),
    "transfer": (("content_image", "class_image"), ("image",)),
}
NETWORKS = tuple(NETWORK_IO)
RUNTIME_NETWORKS = ("content_encoder", "class_encoder", "generator")  # what the runtime's Transfer runs
IMAGE_TENSORS = ("image", "content_image", "class_image")

# Keys of a network's `files` in the manifest, and the file each names.
FILE_SUFFIXES = {
    "onnx": ".onnx",  # float32, as exported
    "onnx_opt": ".opt.onnx",  # float32, onnxruntime's basic (portable) graph optimisations
    "onnx_fp16": ".fp16.onnx",  # half precision inside, float32 inputs and outputs
    "onnx_int8": ".int8.onnx",  # static int8 quantization (lordkit export --int8)
    "torchscript": ".pt",  # frozen TorchScript
}

# Metadata every ONNX file carries (metadata_props) and TorchScript files carry as an extra file.
META_FORMAT = "lordkit.format"
META_NETWORK = "lordkit.model"
META_VERSION = "lordkit.version"
META_MANIFEST = "lordkit.manifest"  # the manifest (without sha256 and parity) as JSON
TORCHSCRIPT_EXTRA = "lordkit.json"  # _extra_files entry holding the same keys as JSON

# Manifest fields the runtime cannot work without.
REQUIRED_KEYS = ("img_size", "channels", "content_dim", "class_dim", "class_names", "models", "class_bank", "sha256")
FACE_POINTS_DEFAULT = "eyes_nose_mouth"


def file_name(network: str, kind: str) -> str:
    """The file of one network in one form: file_name("generator", "onnx_opt") == "generator.opt.onnx"."""
    return network + FILE_SUFFIXES[kind]


def network_of_file(name: str) -> str | None:
    """The network an export file belongs to by its name, or None for other files."""
    return next((n for n in NETWORKS if name.startswith(n + ".")), None)


def metadata(network: str, version: str, manifest_json: str) -> dict[str, str]:
    """The metadata stamped on every file of `network`."""
    return {META_FORMAT: FORMAT, META_NETWORK: network, META_VERSION: version, META_MANIFEST: manifest_json}


def tensor_shape(name: str, batch: int, img_size: int, channels: int, content_dim: int,
                 class_dim: int) -> tuple[int, ...]:
    """Shape of a named network input or output at a batch size."""
    if name in IMAGE_TENSORS:
        return (batch, channels, img_size, img_size)
    if name == "content_code":
        return (batch, content_dim)
    if name == "class_code":
        return (batch, class_dim)
    raise ValueError(f"unknown tensor name {name!r}")


def sha256_file(path: Path) -> str:
    """The digest the manifest records for every file (and the runtime checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
