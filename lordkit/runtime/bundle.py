"""Open an export directory (docs/export-format.md) and check it before anything runs.

`Bundle(path)` reads manifest.json, refuses a wrong format, checks that every file the manifest
lists exists and (by default) has the sha256 it records, and that every ONNX file carries the
`lordkit.*` metadata_props the exporter stamps. The manifest's fields are checked once, against
the schema in lordkit.export_format, so nothing later meets a field of the wrong type. Files are
read without following links and only when they are regular files (a FIFO is refused, never waited
on), an ONNX file may keep weights only in files the manifest lists, and the class bank must hold
finite numbers.
ONNX files are read with a small protobuf walk over a memory map (tensor bytes are skipped), so
the check needs neither `onnx` nor a session.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lordkit import export_format as fmt
from lordkit.errors import BadInput, LordkitError, UnknownClass, Unsupported
from lordkit.export_format import FORMAT, RUNTIME_NETWORKS
from lordkit.fsutil import recover_tree

VERIFY_MODES = ("all", "used", "none")
PRECISIONS = ("fp32", "fp16", "int8")
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


# ---------------------------------------------------------------------------------------------
# ONNX files without the onnx package: a small protobuf walk over a memory map of the file.
# ModelProto field 14 is metadata_props, a repeated StringStringEntryProto (key = 1, value = 2);
# field 7 is the graph. Tensors that keep their bytes in another file (external data) are found
# by walking the graph down to every TensorProto: the runtime must know every file onnxruntime
# would open before it lets onnxruntime open any.

_WIRE_FIXED = {1: 8, 5: 4}  # wire type -> bytes of a fixed-size value
_MAX_NESTING = 64  # subgraphs inside subgraphs (If / Loop bodies); real models nest a few levels
# Message fields that lead to tensors, per message kind: field number -> kind of the sub-message.
_TENSOR_PATHS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto.graph, .training_info, .functions
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto.initialization, .algorithm
    "function": {7: "node"},  # FunctionProto.node
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto.node, .initializer, .sparse_initializer
    "node": {5: "attribute"},  # NodeProto.attribute
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto.values, .indices
    "tensor": {},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1


def _varint_bytes(buf, i: int, end: int | None = None) -> tuple[int, int]:
    end = len(buf) if end is None else end
    result = shift = 0
    while True:
        if i >= end:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) of each field in buf[start:end]: an int for varints, the
    (start, end) offsets of the bytes for length-delimited fields, None for fixed-size ones."""
    i = start
    while i < end:
        tag, i = _varint_bytes(buf, i, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint_bytes(buf, i, end)
            yield field, wire, value
        elif wire == 2:
            length, i = _varint_bytes(buf, i, end)
            if i + length > end:
                raise ValueError("field runs past the end of its message")
            yield field, wire, (i, i + length)
            i += length
        elif wire in _WIRE_FIXED:
            i += _WIRE_FIXED[wire]
            if i > end:
                raise ValueError("field runs past the end of its message")
            yield field, wire, None
        else:
            raise ValueError(f"wire type {wire}")


def _entry(buf, start: int, end: int) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    key = value = ""
    for field, wire, span in _fields(buf, start, end):
        if wire != 2:
            raise ValueError("unexpected wire type in a string entry")
        text = bytes(buf[span[0]:span[1]]).decode("utf-8")
        if field == 1:
            key = text
        elif field == 2:
            value = text
    return key, value


def _external_locations(buf, start: int, end: int, kind: str, depth: int, out: list[str]) -> None:
    """Append the external data file of every tensor under this message to `out`."""
    if depth > _MAX_NESTING:
        raise ValueError("subgraphs nested too deeply")
    paths = _TENSOR_PATHS[kind]
    external, locations = False, []
    for field, wire, value in _fields(buf, start, end):
        if kind == "tensor":
            if field == _TENSOR_DATA_LOCATION and wire == 0:
                external = value == _EXTERNAL
            elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
                key, location = _entry(buf, *value)
                if key == "location":
                    locations.append(location)
        elif field in paths and wire == 2:
            _external_locations(buf, *value, paths[field], depth + 1, out)
    if external and not locations:
        raise ValueError("a tensor stored externally names no location")
    out += locations


def scan_onnx(path: str | Path, fd: int | None = None) -> tuple[dict[str, str], list[str]]:
    """(metadata_props, external data locations) of an ONNX model file; ValueError if it is not one.

    fd: an open descriptor of the file to read instead of opening `path`.
    """
    import mmap

    own = fd is None
    if own:
        fd = _open_regular(Path(path))
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError("empty file")
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
            props: dict[str, str] = {}
            graph = None
            for field, wire, value in _fields(buf, 0, size):
                if field == 14 and wire == 2:
                    key, text = _entry(buf, *value)
                    props[key] = text
                elif field == 7 and wire == 2:
                    graph = value
            if graph is None:
                raise ValueError("no graph")
            locations: list[str] = []
            _external_locations(buf, 0, size, "model", 0, locations)
            return props, list(dict.fromkeys(locations))
    finally:
        if own:
            os.close(fd)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX model file; ValueError if the file is not an ONNX model."""
    return scan_onnx(path)[0]


# O_NONBLOCK: opening a FIFO (or a device) for reading would wait for a writer forever; with it the
# open returns at once and fstat tells what the file is. Regular files read as usual.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0))


class NotRegular(OSError):
    """An export file that is a FIFO, a device or a socket: reading it could block forever."""


def _open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file `path`, refusing a symbolic link in its last
    component (OSError ELOOP) and anything but a regular file (NotRegular), without blocking."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _os_problem(e: OSError) -> str:
    """The end of a `cannot read X: ...` line for an OS error."""
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "it is a directory"
    if isinstance(e, NotRegular):
        return "it is not a regular file"
    return (e.strerror or str(e)).lower()


# ---------------------------------------------------------------------------------------------


class Bundle:
    """A checked export directory: its manifest, files, class names, face template and class bank.

    verify: "all" (default) hashes every file the manifest lists when the bundle opens; "used"
    hashes a file only when the runtime asks for it (faster start with big .pt files beside the
    ONNX ones); "none" only checks that the files exist. ONNX metadata is checked in every mode.
    needs: the file kind every network the runtime runs must have: "onnx", or "aoti" (the torch backend).
    """

    def __init__(self, path: str | os.PathLike, verify: str = "all", needs: str = "onnx"):
        if verify not in VERIFY_MODES:
            raise LordkitError(f"unknown verify mode {verify!r}; use one of: {', '.join(VERIFY_MODES)}")
        self.path = Path(path)  # a link to the export dir is fine; links inside it are not
        self.verify = verify
        recover_tree(self.path, depth=1)  # an export replaced by a process that died half-way is repaired first
        if not self.path.exists():
            raise LordkitError(f"export not found: {self.path}")
        if not self.path.is_dir():
            raise LordkitError(f"{self.path} is not an export directory")
        manifest_path = self.path / fmt.MANIFEST
        m = self._read_manifest(manifest_path)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            got = m.get("format") if isinstance(m, dict) else type(m).__name__
            raise LordkitError(f"{manifest_path} has format {got!r}; this runtime reads {FORMAT}")
        problem = fmt.manifest_problem(m)
        if problem:
            raise LordkitError(f"{manifest_path}: {problem}; re-export the model")
        self.manifest: dict[str, Any] = m
        self._hashed: set[str] = set()
        self._external: dict[str, list[str]] = {}  # ONNX file -> the external data files it reads
        self._class_bank: np.ndarray | None = None

        # Every listed file must exist and be a regular file of the dir: a partial copy, or a
        # link that would let the manifest's hashes vouch for a file elsewhere, is caught here,
        # whatever `verify` says.
        sha = m["sha256"]
        for name in sha:
            self._check_regular(name)
        for network in RUNTIME_NETWORKS:  # each network the runtime runs must have files of the kind it needs
            if needs == "onnx":
                self._files(network)
            else:
                self.file_path(network, needs)
        if verify == "all":
            self._hash(list(sha))
        for name in sha:
            if name.endswith(".onnx"):
                self._check_onnx_file(name)
        self.class_bank  # read and checked now (shape, dtype, finite values): a bad bank is refused on opening

    @staticmethod
    def _read_manifest(path: Path) -> Any:
        try:
            fd = _open_regular(path)  # a FIFO is refused here, not waited on
        except FileNotFoundError:
            raise LordkitError(f"{path.parent} is not a lordkit export: it has no {fmt.MANIFEST}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LordkitError(f"{path} is a symbolic link; the runtime does not follow links inside an "
                                   "export") from None
            raise LordkitError(f"cannot read {path}: {_os_problem(e)}") from None
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(fmt.MAX_MANIFEST_BYTES + 1)
        except OSError as e:
            raise LordkitError(f"cannot read {path}: {_os_problem(e)}") from None
        finally:
            os.close(fd)
        if len(data) > fmt.MAX_MANIFEST_BYTES:
            raise LordkitError(f"{path} is over {fmt.MAX_MANIFEST_BYTES >> 20} MB, too big for a manifest; "
                               "re-export the model")
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            detail = str(e).splitlines()[0] if str(e) else "nested too deeply"
            raise LordkitError(f"export manifest {path} is not valid JSON: {detail}") from None

    def _check_regular(self, name: str) -> None:
        """A listed file must be a regular file inside the dir, not a link to one elsewhere."""
        path = self.path / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise LordkitError(f"export {self.path} is missing {name} (listed in manifest.json); "
                               "copy the whole export dir again") from None
        except OSError as e:
            raise LordkitError(f"cannot read {path}: {_os_problem(e)}") from None
        if stat.S_ISLNK(st.st_mode):
            raise LordkitError(f"export {self.path}: {name} is a symbolic link; the runtime does not follow links "
                               "inside an export, copy the file itself in")
        if not stat.S_ISREG(st.st_mode):
            raise LordkitError(f"export {self.path}: {name} (listed in manifest.json) is not a regular file")

    def _open(self, name: str) -> int:
        """A read-only descriptor of a listed file (never through a link); LordkitError if it cannot be read."""
        path = self.path / name
        try:
            return _open_regular(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LordkitError(f"export {self.path}: {name} is a symbolic link; the runtime does not follow "
                                   "links inside an export, copy the file itself in") from None
            if isinstance(e, NotRegular):
                raise LordkitError(f"export {self.path}: {name} (listed in manifest.json) is not a regular "
                                   "file") from None
            raise LordkitError(f"cannot read {path}: {_os_problem(e)}") from None

    def _sha256(self, name: str) -> str:
        fd = self._open(name)
        try:
            return _sha256_fd(fd)
        except OSError as e:
            raise LordkitError(f"cannot read {self.path / name}: {_os_problem(e)}") from None
        finally:
            os.close(fd)

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
        entry = self.manifest["models"].get(network)  # the schema check made models a dict of dicts
        if entry is None:
            raise LordkitError(f"export {self.path} has no {network} in its manifest; re-export the model")
        files = entry["files"]
        if "onnx" not in files:
            raise LordkitError(f"export {self.path} has no ONNX file for {network} (exported without --onnx?); "
                               "the runtime needs the ONNX files")
        return files

    def model_path(self, network: str, precision: str = "fp32", optimized: bool = True) -> Path:
        """The ONNX file to run for a network: *.opt.onnx when present (and `optimized`), *.fp16.onnx or
        *.int8.onnx."""
        files = self._files(network)
        if precision == "fp16":
            if "onnx_fp16" not in files:
                raise Unsupported(f"export {self.path} has no fp16 files; re-export with --fp16 or use fp32")
            name = files["onnx_fp16"]
        elif precision == "int8":
            if "onnx_int8" not in files:
                raise Unsupported(f"export {self.path} has no int8 files; re-export with --int8 or use fp32")
            name = files["onnx_int8"]
        elif precision == "fp32":
            name = files["onnx_opt"] if optimized and "onnx_opt" in files else files["onnx"]
        else:
            raise BadInput(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
        return self._checked(name)

    def file_path(self, network: str, kind: str) -> Path:
        """The export's file of another kind than ONNX ("aoti", "executorch", "torchscript"), hashed
        like the rest; Unsupported when the export has none."""
        entry = self.manifest["models"].get(network)
        name = (entry or {}).get("files", {}).get(kind)
        if not name:
            flag = {"aoti": "--aoti", "executorch": "--executorch", "torchscript": "--torchscript"}.get(kind, kind)
            raise Unsupported(f"export {self.path} has no {kind} file for {network}; re-export with {flag}")
        return self._checked(name)

    def _checked(self, name: str) -> Path:
        if name not in self.manifest["sha256"]:
            raise LordkitError(f"files disagree with the manifest: {name} has no sha256 entry in "
                               f"{self.path / 'manifest.json'}")
        if self.verify != "none":
            self._hash([name, *self._external.get(name, [])])  # an ONNX file with the weights it reads
        return self.path / name

    def _hash(self, names: list[str]) -> None:
        todo = [n for n in names if n not in self._hashed]
        if not todo:
            return
        # hashlib releases the GIL on large buffers: hash the files in parallel.
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            digests = list(pool.map(self._sha256, todo))
        for name, got in zip(todo, digests):
            want = str(self.manifest["sha256"][name]).lower()
            if got != want:
                raise LordkitError(f"files disagree with the manifest: {name} has sha256 {got[:12]}..., "
                                   f"manifest.json says {want[:12]}...; copy or re-export the whole dir")
            self._hashed.add(name)

    def _check_onnx_file(self, name: str) -> None:
        """lordkit metadata, and external data only from files the manifest lists (and so hashes)."""
        fd = self._open(name)
        try:
            props, locations = scan_onnx(self.path / name, fd)
        except OSError as e:
            raise LordkitError(f"cannot read {self.path / name}: {_os_problem(e)}") from None
        except (ValueError, UnicodeDecodeError):
            raise LordkitError(f"not a lordkit export: {name} is not an ONNX model file") from None
        finally:
            os.close(fd)
        if props.get(fmt.META_FORMAT) != FORMAT:
            raise LordkitError(f"not a lordkit export: {name} came from another tool (no lordkit metadata)")
        network = props.get(fmt.META_NETWORK)
        expected = fmt.network_of_file(name)
        if expected is not None and network != expected:
            raise LordkitError(f"files disagree with the manifest: {name} holds the {network} network, not {expected}")
        for location in locations:
            if not fmt.is_plain_file_name(location):
                raise LordkitError(f"not a lordkit export: {name} reads external data from {location!r}, "
                                   "outside the export dir")
            if location not in self.manifest["sha256"]:
                raise LordkitError(f"files disagree with the manifest: {name} reads external data from {location}, "
                                   "which manifest.json does not list; re-export the model")
        self._external[name] = locations

    @property
    def class_bank(self) -> np.ndarray:
        """Stage-1 class codes, float32 (n_classes, class_dim); row = class id."""
        if self._class_bank is None:
            name = str(self.manifest["class_bank"])
            path = self._checked(name)
            want = (self.n_classes, self.class_dim)
            fd = self._open(name)
            try:
                with os.fdopen(fd, "rb", closefd=False) as f:
                    # The header first: a file declaring a huge array is refused before it is allocated.
                    version = np.lib.format.read_magic(f)
                    if version not in _NPY_HEADERS:
                        raise ValueError(f".npy format version {version} is not one numpy.save writes for codes")
                    shape, _, dtype = _NPY_HEADERS[version](f)
                    if shape != want or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
                        raise LordkitError(f"{path} is {dtype} {shape}; the manifest says float32 {want}")
                    f.seek(0)
                    bank = np.load(f, allow_pickle=False)
            except OSError as e:
                raise LordkitError(f"cannot read {path}: {_os_problem(e)}") from None
            except (ValueError, EOFError) as e:
                detail = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise LordkitError(f"{path} is not a readable .npy file: {detail}") from None
            finally:
                os.close(fd)
            if bank.shape != want or not np.issubdtype(bank.dtype, np.floating):
                raise LordkitError(f"{path} is {bank.dtype} {bank.shape}; the manifest says float32 {want}")
            with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range becomes inf: refused below
                bank = np.ascontiguousarray(bank, dtype=np.float32)
            bad = ~np.isfinite(bank)
            if bad.any():
                rows = np.flatnonzero(bad.any(axis=1))
                raise LordkitError(f"{path} holds {int(bad.sum())} NaN or infinite value(s) (class id"
                                   f"{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows[:5]))}"
                                   f"{', ...' if len(rows) > 5 else ''}); re-export the model")
            self._class_bank = bank
        return self._class_bank

    def class_id(self, ref: int | str) -> int:
        """A class id from an id or a class name; LordkitError naming the valid range or close names."""
        n = self.n_classes
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            if not 0 <= int(ref) < n:
                raise UnknownClass(f"class id {int(ref)} is out of range: this model has {n} classes (0-{n - 1})")
            return int(ref)
        names = self.class_names
        try:
            return names.index(str(ref))
        except ValueError:
            import difflib

            close = difflib.get_close_matches(str(ref), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known names: {', '.join(names[:5])}" + (
                ", ..." if n > 5 else "")
            raise UnknownClass(f"unknown class name {str(ref)!r}{hint}") from None

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
