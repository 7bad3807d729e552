"""The export contract: names, files and metadata that the exporter writes and everything else reads.

Torch-free (numpy at most) so that the runtime on an edge box, the int8 quantizer, the benchmarks
and the exporter import the same definitions. docs/export-format.md describes the layout for
people; this module is its single definition in code.
"""

from __future__ import annotations

import hashlib
import math
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
    "aoti": ".pt2",  # AOTInductor package (lordkit export --aoti): compiled code + weights for libtorch
    "executorch": ".pte",  # ExecuTorch program, XNNPACK-delegated (lordkit export --executorch)
    "executorch_int8": ".int8.pte",  # the same with int8 convolutions and linears (--executorch --int8)
}
# Where an export's AOTInductor packages run (manifest field `aoti_device`): their code is compiled
# for one device kind.
AOTI_DEVICES = ("cpu", "cuda")

# What wrote an export's ONNX files (manifest field `onnx_exporter`): torch.onnx's torch.export-based
# exporter or its TorchScript-based one. Manifests written before the field existed lack it: their
# ONNX files came from the TorchScript-based exporter.
ONNX_EXPORTERS = ("torch.export", "legacy")
ONNX_EXPORTER_BEFORE = "legacy"

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


def onnx_exporter(manifest: dict) -> str | None:
    """The exporter that wrote a manifest's ONNX files (ONNX_EXPORTERS), None when it lists none;
    "legacy" for manifests from before the field."""
    if not any(kind.startswith("onnx") for entry in manifest.get("models", {}).values()
               for kind in entry.get("files", {})):
        return None
    return manifest.get("onnx_exporter") or ONNX_EXPORTER_BEFORE


def sha256_file(path: Path) -> str:
    """The digest the manifest records for every file (and the runtime checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The manifest's schema: what every field must hold. Readers check a manifest once, with
# manifest_problem, before they trust any field.

IMG_SIZE_RANGE = (8, 4096)  # the smallest generator starts at 8 px; 4096 px is far past any trained size
CHANNELS = (1, 3)  # grey or RGB
CODE_DIM_RANGE = (1, 65536)  # content_dim and class_dim
LAYOUT = "NCHW"
DTYPE = "float32"
VALUE_RANGE = (0.0, 1.0)
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is a few KB; class names of a million classes stay far below this
SHA256_HEX_LEN = 64
TENSOR_ELEMENT_TYPE = "tensor(float)"  # every network input and output, also in fp16 and int8 files
# Optional fields that hold text or null when present.
OPTIONAL_TEXT = ("model_name", "lordkit_version", "created", "dataset_id", "face_points", "torch_version",
                 "onnxscript_version")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_plain_file_name(name: object) -> bool:
    """A file directly inside the export dir: no path separator, not '.', '..' or empty, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name)


def _int_in(m: dict, key: str, lo: int, hi: int) -> str | None:
    x = m.get(key)
    if not _is_int(x) or not lo <= x <= hi:
        return f"{key} must be an integer from {lo} to {hi}, got {x!r}"
    return None


def manifest_problem(m: object) -> str | None:
    """What is wrong with a manifest's fields (one line naming the field and what it should be), or None.

    Checks the types and ranges of every field a reader uses; `format` is checked by the caller
    (a manifest of another format deserves its own message).
    """
    if not isinstance(m, dict):
        return f"the manifest must be a JSON object, got {type(m).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for problem in (_int_in(m, "img_size", *IMG_SIZE_RANGE), _int_in(m, "content_dim", *CODE_DIM_RANGE),
                    _int_in(m, "class_dim", *CODE_DIM_RANGE)):
        if problem:
            return problem
    if not _is_int(m["channels"]) or m["channels"] not in CHANNELS:
        return f"channels must be 1 or 3, got {m['channels']!r}"
    if "layout" in m and m["layout"] != LAYOUT:
        return f"layout must be {LAYOUT!r}, got {m['layout']!r}"
    if "dtype" in m and m["dtype"] != DTYPE:
        return f"dtype must be {DTYPE!r}, got {m['dtype']!r}"
    if "value_range" in m and (not isinstance(m["value_range"], list) or len(m["value_range"]) != 2
                               or not all(_is_number(v) for v in m["value_range"])
                               or tuple(m["value_range"]) != VALUE_RANGE):
        return f"value_range must be [0.0, 1.0], got {m['value_range']!r}"
    for key in OPTIONAL_TEXT:
        if m.get(key) is not None and not isinstance(m[key], str):
            return f"{key} must be text or null, got {m[key]!r}"
    if m.get("opset") is not None and (not _is_int(m["opset"]) or m["opset"] < 1):
        return f"opset must be a positive integer or null, got {m['opset']!r}"
    if m.get("onnx_exporter") is not None and m["onnx_exporter"] not in ONNX_EXPORTERS:
        return f"onnx_exporter must be one of {', '.join(ONNX_EXPORTERS)} or null, got {m['onnx_exporter']!r}"
    if m.get("aoti_device") is not None and m["aoti_device"] not in AOTI_DEVICES:
        return f"aoti_device must be one of {', '.join(AOTI_DEVICES)} or null, got {m['aoti_device']!r}"

    names = m["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "class_names must be a non-empty list of strings"
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        return f"class_names must be distinct, but {twice!r} appears twice"

    template = m.get("face_template")
    if template is not None and (not isinstance(template, list) or len(template) < 2 or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in template)):
        return "face_template must be null or a list of at least two [x, y] number pairs"

    sha = m["sha256"]
    if not isinstance(sha, dict) or not sha:
        return "sha256 must map file names to hex digests"
    for name, digest in sha.items():
        if not is_plain_file_name(name) or name == MANIFEST:
            return f"sha256 lists {name!r}, which is not a file name inside the export dir"
        if (not isinstance(digest, str) or len(digest) != SHA256_HEX_LEN
                or any(c not in "0123456789abcdefABCDEF" for c in digest)):
            return f"sha256[{name!r}] must be {SHA256_HEX_LEN} hex digits, got {digest!r}"

    bank = m["class_bank"]
    if not is_plain_file_name(bank):
        return f"class_bank must be a file name inside the export dir, got {bank!r}"
    if bank not in sha:
        return f"class_bank {bank!r} has no sha256 entry"

    models = m["models"]
    if not isinstance(models, dict):
        return "models must map network names to their inputs, outputs and files"
    for network, entry in models.items():
        if network not in NETWORK_IO:
            return f"models has an unknown network {network!r}; use one of: {', '.join(NETWORKS)}"
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            return f"models[{network!r}] must be an object with a 'files' object"
        inputs, outputs = NETWORK_IO[network]
        for key, want in (("inputs", inputs), ("outputs", outputs)):
            if key in entry and entry[key] != list(want):
                return f"models[{network!r}].{key} must be {list(want)}, got {entry[key]!r}"
        for kind, name in entry["files"].items():
            if kind not in FILE_SUFFIXES:
                return (f"models[{network!r}].files has an unknown kind {kind!r}; "
                        f"use one of: {', '.join(FILE_SUFFIXES)}")
            if not is_plain_file_name(name):
                return f"models[{network!r}].files[{kind!r}] must be a file name inside the export dir, got {name!r}"
            if name not in sha:
                return f"models[{network!r}].files[{kind!r}] names {name!r}, which has no sha256 entry"
    return None
