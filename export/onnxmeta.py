"""What the exporter and the int8 quantizer share about writing ONNX files: metadata_props, and one
error line for a write that the disk refused. No torch."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

from lordkit.errors import LordkitError, errno_in_message, os_error_line

# Faults of the disk a file is being written to; anything else (a bug, a bad graph) keeps its own type.
WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def write_fault(e: BaseException) -> int | None:
    """The errno of a write the disk refused: an OSError's own, or one a library only names in its
    text (torch's and onnx's C++ writers raise RuntimeError or their own types on a full disk)."""
    code = e.errno if isinstance(e, OSError) else errno_in_message(str(e))
    return code if code in WRITE_FAULTS else None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a disk fault while writing `path` into one line: `no space left on the device writing <path>`."""
    try:
        yield
    except LordkitError:
        raise
    except Exception as e:
        code = write_fault(e)
        if code is None:
            raise
        raise LordkitError(f"{os_error_line(OSError(code, ''))} writing {path}") from None


def write_metadata(path: Path, props: dict[str, str]) -> None:
    """Replace the metadata_props of the ONNX file at path with props, in place."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
