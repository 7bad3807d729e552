"""What every command shares: the base dir, and turning user errors into one line and an exit status."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import typer

from lordkit.errors import LordkitError, Terminated, errno_in_message, os_error_line
from lordkit.fsutil import base_dir, recover


def err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def handle_errors(fn: Callable) -> Callable:
    """Run a command body; a LordkitError becomes `error: ...` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LordkitError as e:
            if not getattr(e, "reported", False):
                err(str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise typer.Exit(e.exit_code) from None
        except Terminated:
            err("terminated (SIGTERM); nothing was left half-written")
            raise typer.Exit(Terminated.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(130) from None
        except MemoryError:
            err("out of memory; try a smaller --batch-size or image size")
            raise typer.Exit(1) from None
        except OSError as e:  # by kind: no space, permission, read-only fs, not a directory, exists, ...
            err(os_error_line(e))
            raise typer.Exit(2) from None
        except RuntimeError as e:  # C++ writers (torch.save, onnx) report OS faults only in their text
            code = errno_in_message(str(e))
            if code is None:
                raise
            err(os_error_line(OSError(code, "")))
            raise typer.Exit(2) from None

    return wrapper


def get_base(ctx: typer.Context) -> Path:
    """The base dir; every command that uses it first repairs what crashed commands left in
    data/, models/ and exports/ (missing names restored, dead processes' temporary names removed)."""
    obj = ctx.find_root().obj or {}
    base = base_dir(obj.get("base_dir"))
    for sub in ("data", "models", "exports"):
        recover(base / sub)
    return base


def say(message: str) -> None:
    """Results go to stdout; progress and diagnostics go to stderr."""
    typer.echo(message)
    sys.stdout.flush()
