"""What every command shares: the base dir, and turning user errors into one line and an exit status."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import typer

from lordkit.errors import (Hint, Interrupted, LordkitError, OutputExists, Terminated, errno_in_message,
                            os_error_line)
from lordkit.fsutil import base_dir, recover


# How the command line names the library's options and words its hints (lordkit.errors).
CLI_OPTIONS = {"paste_back": "--paste-back", "all_faces": "--all-faces", "no_align": "--no-align"}
CLI_HINTS = {
    Hint.NO_ALIGN: "; pass --no-align for pre-aligned images",
    Hint.GIVE_CONTENT: ": give a photo or video path",
    Hint.GIVE_CLASS: ": --class REF.jpg, --class-id N or --class-name NAME",
}


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
                line = e.words(CLI_HINTS, CLI_OPTIONS)
                err(line.splitlines()[0] if line else type(e).__name__)
            raise typer.Exit(e.exit_code) from None
        except Interrupted as e:  # the command has said what it kept
            err("terminated (SIGTERM)" if e.terminated else "interrupted")
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


def as_int(text: str, flag: str, minimum: int | None = None) -> int:
    """An integer option parsed here, so that a bad value is one error line (click draws a usage box)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise LordkitError(f"{flag} must be an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise LordkitError(f"{flag} must be >= {minimum}, got {value}")
    return value


def refuse_existing(targets: list[Path], force: bool) -> None:
    """Refuse, before any work, to replace outputs that exist (unless --force)."""
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExists(f"output {existing[0]} already exists{more}; pass --force to replace it")
