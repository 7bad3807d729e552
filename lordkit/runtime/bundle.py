"""Open an export directory (docs/export-format.md) and check it before anything runs.

`Bundle(path)` reads manifest.json, refuses a wrong format, checks that every file the manifest
lists exists and (by default) has the sha256 it records, and that every ONNX file carries the
`lordkit.*` metadata_props the exporter stamps. ONNX metadata is read with a small protobuf walk
that skips the graph, so the check costs a few reads per file and needs neither `onnx` nor a session.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lordkit import export_format as fmt
from lordkit.errors import LordkitError
from lordkit.export_format import FORMAT, RUNTIME_NETWORKS, sha256_file
from lordkit.fsutil import read_json

VERIFY_MODES = ("all", "used", "none")


# ---------------------------------------------------------------------------------------------
# ONNX metadata without the onnx package: ModelProto field 14 is metadata_props, a repeated
# StringStringEntryProto (key = 1, value = 2); field 7 is the graph, which we seek past.


def _varint(f: BinaryIO) -> int | None:
    result = shift = 0
    while True:
        b = f.read(1)
        if not b:
            if shift:
                raise ValueError("truncated varint")
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _entry(buf: bytes) -> tuple[str, str]:
    key = value = ""
    i = 0
    while i < len(buf):
        tag, i = _varint_bytes(buf, i)
        if tag & 7 != 2:
            raise ValueError("unexpected wire type in a metadata entry")
        length, i = _varint_bytes(buf, i)
        text = buf[i:i + length].decode("utf-8")
        i += length
        if tag >> 3 == 1:
            key = text
        elif tag >> 3 == 2:
            value = text
    return key, value


def _varint_bytes(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX model file; ValueError if the file is not an ONNX model."""
    path = Path(path)
    size = path.stat().st_size
    props: dict[str, str] = {}
    seen_graph = False
    with open(path, "rb") as f:
        while True:
            tag = _varint(f)
            if tag is None:
                break
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise ValueError("field number 0")
            if wire == 0:
                if _varint(f) is None:
                    raise ValueError("truncated")
            elif wire == 1:
                f.seek(8, os.SEEK_CUR)
            elif wire == 5:
                f.seek(4, os.SEEK_CUR)
            elif wire == 2:
                length = _varint(f)
                if length is None or f.tell() + length > size:
                    raise ValueError("field runs past the end of the file")
                if field == 14:
                    key, value = _entry(f.read(length))
                    props[key] = value
                else:
                    seen_graph |= field == 7
                    f.seek(length, os.SEEK_CUR)
            else:
                raise ValueError(f"wire type {wire}")
            if f.tell() > size:
                raise ValueError("field runs past the end of the file")
    if not seen_graph:
        raise ValueError("no graph")
    return props


# ---------------------------------------------------------------------------------------------


class Bundle:
    """A checked export directory: its manifest, files, class names, face template and class bank.

    verify: "all" (default) hashes every file the manifest lists when the bundle opens; "used"
    hashes a file only when the runtime asks for it (faster start with big .pt files beside the
    ONNX ones); "none" only checks that the files exist. ONNX metadata is checked in every mode.
    """

    def __init__(self, path: str | os.PathLike, verify: str = "all"):
        if verify not in VERIFY_MODES:
            raise LordkitError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        self.path = Path(path)
        self.verify = verify
        if not self.path.exists():
            raise LordkitError(f"export not found: {self.path}")
        if not self.path.is_dir():
            raise LordkitError(f"{self.path} is not an export directory")
        manifest_path = self.path / fmt.MANIFEST
        if not manifest_path.is_file():
            raise LordkitError(f"{self.path} is not a lordkit export: it has no {fmt.MANIFEST}")
        m = read_json(manifest_path, "export manifest")
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            got = m.get("format") if isinstance(m, dict) else type(m).__name__
            raise LordkitError(f"{manifest_path} has format {got!r}; this runtime reads {FORMAT}")
        missing = [k for k in fmt.REQUIRED_KEYS if k not in m]
        if missing:
            raise LordkitError(f"{manifest_path} lacks {', '.join(missing)}; re-export the model")
        self.manifest: dict[str, Any] = m
        self._hashed: set[str] = set()
        self._class_bank: np.ndarray | None = None

        # Every listed file must exist: a partial copy is caught here, whatever `verify` says.
        sha = m["sha256"]
        if not isinstance(sha, dict):
            raise LordkitError(f"{manifest_path}: sha256 must map file names to digests")
        for name in sha:
            if Path(name).name != name or name in (".", ".."):
                raise LordkitError(f"{manifest_path} lists {name!r}, which is not a file of the export dir")
            if not (self.path / name).is_file():
                raise LordkitError(f"export {self.path} is missing {name} (listed in manifest.json); "
                                   "copy the whole export dir again")
        for network in RUNTIME_NETWORKS:
            self._files(network)  # each network the runtime runs must have ONNX files
        if verify == "all":
            self._hash(list(sha))
        for name in sha:
            if name.endswith(".onnx"):
                self._check_onnx_metadata(name)

    # -- manifest fields ----------------------------------------------------------------------

    @property
    def img_size(self) -> int:
        return int(self.manifest["img_size"])

    @property
    def channels(self) -> int:
        return int(self.manifest["channels"])

    @property
    def content_dim(self) -> int:
        return int(self.manifest["content_dim"])

    @property
    def class_dim(self) -> int:
        return int(self.manifest["class_dim"])

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self.manifest["class_names"]]

    @property
    def n_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model_name") or self.path.name)

    @property
    def face_template(self) -> list[list[float]] | None:
        return self.manifest.get("face_template") or None

    @property
    def face_points(self) -> str | None:
        return self.manifest.get("face_points") or (fmt.FACE_POINTS_DEFAULT if self.face_template else None)

    @property
    def is_face(self) -> bool:
        return self.face_template is not None

    # -- files ----------------------------------------------------------------------------------

    def _files(self, network: str) -> dict[str, str]:
        entry = self.manifest["models"].get(network) if isinstance(self.manifest["models"], dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            raise LordkitError(f"export {self.path} has no {network} in its manifest; re-export the model")
        files = entry["files"]
        if "onnx" not in files:
            raise LordkitError(f"export {self.path} has no ONNX file for {network} (exported without --onnx?); "
                               "the runtime needs the ONNX files")
        return files

    def model_path(self, network: str, precision: str = "fp32", optimized: bool = True) -> Path:
        """The ONNX file to run for a network: *.opt.onnx when present (and `optimized`), or *.fp16.onnx."""
        files = self._files(network)
        if precision == "fp16":
            if "onnx_fp16" not in files:
                raise LordkitError(f"export {self.path} has no fp16 files; re-export with --fp16 or use fp32")
            name = files["onnx_fp16"]
        elif precision == "fp32":
            name = files["onnx_opt"] if optimized and "onnx_opt" in files else files["onnx"]
        else:
            raise LordkitError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        return self._checked(name)

    def _checked(self, name: str) -> Path:
        if name not in self.manifest["sha256"]:
            raise LordkitError(f"files disagree with the manifest: {name} has no sha256 entry in "
                               f"{self.path / 'manifest.json'}")
        if self.verify != "none":
            self._hash([name])
        return self.path / name

    def _hash(self, names: list[str]) -> None:
        todo = [n for n in names if n not in self._hashed]
        if not todo:
            return
        # hashlib releases the GIL on large buffers: hash the files in parallel.
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            digests = list(pool.map(lambda n: sha256_file(self.path / n), todo))
        for name, got in zip(todo, digests):
            want = str(self.manifest["sha256"][name]).lower()
            if got != want:
                raise LordkitError(f"files disagree with the manifest: {name} has sha256 {got[:12]}..., "
                                   f"manifest.json says {want[:12]}...; copy or re-export the whole dir")
            self._hashed.add(name)

    def _check_onnx_metadata(self, name: str) -> None:
        try:
            props = onnx_metadata(self.path / name)
        except (ValueError, UnicodeDecodeError, OSError):
            raise LordkitError(f"not a lordkit export: {name} is not an ONNX model file") from None
        if props.get(fmt.META_FORMAT) != FORMAT:
            raise LordkitError(f"not a lordkit export: {name} came from another tool (no lordkit metadata)")
        network = props.get(fmt.META_NETWORK)
        expected = fmt.network_of_file(name)
        if expected is not None and network != expected:
            raise LordkitError(f"files disagree with the manifest: {name} holds the {network} network, not {expected}")

    @property
    def class_bank(self) -> np.ndarray:
        """Stage-1 class codes, float32 (n_classes, class_dim); row = class id."""
        if self._class_bank is None:
            name = str(self.manifest["class_bank"])
            path = self._checked(name)
            try:
                bank = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise LordkitError(f"{path} is not a readable .npy file: {e}") from None
            want = (self.n_classes, self.class_dim)
            if bank.shape != want or not np.issubdtype(bank.dtype, np.floating):
                raise LordkitError(f"{path} is {bank.dtype} {bank.shape}; the manifest says float32 {want}")
            self._class_bank = np.ascontiguousarray(bank, dtype=np.float32)
        return self._class_bank

    def class_id(self, ref: int | str) -> int:
        """A class id from an id or a class name; LordkitError naming the valid range or close names."""
        n = self.n_classes
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            if not 0 <= int(ref) < n:
                raise LordkitError(f"class id {int(ref)} is out of range: this model has {n} classes (0-{n - 1})")
            return int(ref)
        names = self.class_names
        try:
            return names.index(str(ref))
        except ValueError:
            import difflib

            close = difflib.get_close_matches(str(ref), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known names: {', '.join(names[:5])}" + (
                ", ..." if n > 5 else "")
            raise LordkitError(f"unknown class name {str(ref)!r}{hint}") from None

    def describe(self) -> dict[str, Any]:
        """A short summary for printing."""
        return {"path": str(self.path), "model_name": self.model_name, "img_size": self.img_size,
                "channels": self.channels, "n_classes": self.n_classes, "face": self.is_face,
                "face_points": self.face_points}

    def __repr__(self) -> str:
        return f"Bundle({json.dumps(self.describe())})"


def resolve_export(model: str | os.PathLike, base: Path | None = None) -> Path:
    """--model: an export dir path, or a name under <base>/exports/."""
    from lordkit.fsutil import export_dir

    path = Path(model).expanduser()
    if path.is_dir() or os.sep in str(model) or (os.altsep and os.altsep in str(model)) or base is None:
        return path
    candidate = export_dir(base, str(model))
    if candidate.is_dir():
        return candidate
    raise LordkitError(f"export not found: {model} (neither a directory nor a name under {base / 'exports'})")
