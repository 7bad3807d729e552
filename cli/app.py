"""`lordkit`: the Typer application. Each command file registers its commands here."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.main

import lordkit
from lordkit.clock import mark_process_start
from lordkit.errors import Terminated

from . import bench, data, demo, evaluate, export_cmd, train
from . import serve as serve_cmd
from . import transfer as transfer_cmd

app = typer.Typer(
    name="lordkit",
    help="Train LORD class/content disentanglement models, export them, and run transfer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lordkit {lordkit.__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    base_dir: Annotated[Optional[Path], typer.Option("--base-dir", "-bd", envvar="LORDKIT_HOME", help="Holds data/, models/ and exports/ (default: $LORDKIT_HOME, else ~/lordkit).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    ctx.obj = {"base_dir": base_dir}


data.register(app)
train.register(app)
evaluate.register(app)
demo.register(app)
export_cmd.register(app)
transfer_cmd.register(app)
bench.register(app)
serve_cmd.register(app)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(args: list[str] | None = None) -> None:
    """The console script: runs a command and exits with its status.

    Usage mistakes (an unknown option, a missing value, a value of the wrong type) are one `error:`
    line naming the command's --help, instead of click's usage box."""
    if args is None:  # the process is this command: a --time-budget counts from its start
        mark_process_start()
    # SIGTERM unwinds like Ctrl-C: staging dirs are removed, training saves a checkpoint.
    signal.signal(signal.SIGTERM, _terminate)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="lordkit", standalone_mode=False)
    except typer.TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `lordkit`: the help
            e.show()
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(e.format_message().split())
        typer.echo(f"error: {message}{hint}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
