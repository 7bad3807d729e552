"""Atomic file writes, safe names and the base-dir layout shared by every command."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lordkit.errors import LordkitError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it is safe to use as a single path component, else raise LordkitError."""
    if not _NAME_RE.fullmatch(name or "") or name in (".", "..") or ".." in name:  # fullmatch: "$" lets "x\n" through
        raise LordkitError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' only "
            "(no path separators, no leading dot, at most 128 characters)"
        )
    return name


def base_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The base dir holding data/, models/ and exports/: --base-dir, else $LORDKIT_HOME, else ~/lordkit."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LORDKIT_HOME")
    return Path(env).expanduser() if env else Path("~/lordkit").expanduser()


def data_dir(base: Path, name: str) -> Path:
    return base / "data" / validate_name(name, "data name")


def model_dir(base: Path, name: str) -> Path:
    return base / "models" / validate_name(name, "model name")


def export_dir(base: Path, name: str) -> Path:
    return base / "exports" / validate_name(name, "export name")


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: give the modes a plain open() would
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LordkitError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LordkitError(f"{what} {path} is not valid JSON: {e}") from None


@contextlib.contextmanager
def staged_dir(final: Path, force: bool = False, what: str = "output") -> Iterator[Path]:
    """Build a directory under a temporary name next to `final`, then rename it into place.

    An existing `final` is refused unless `force`; with `force` it is moved aside and removed only
    after the new directory is in place, so a failure never leaves the user with neither.
    """
    final = Path(final)
    if final.exists() and not force:
        raise LordkitError(f"{what} {final} already exists; pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: an export must be readable by its service
        yield tmp
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
