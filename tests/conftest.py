import importlib.util
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("LORDKIT_OFFLINE", "1")  # tests never touch the network


@pytest.fixture
def base(tmp_path):
    d = tmp_path / "home"
    d.mkdir()
    return d


@pytest.fixture
def cli(base):
    """Run `lordkit --base-dir <base> ARGS...`; returns the click Result (exit_code, stdout, stderr)."""
    from lordkit.cli.app import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, ["--base-dir", str(base), *map(str, args)])

    return run


def one_line_error(result) -> str:
    """The stderr of a failed command must be exactly one `error: ...` line and no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    return err[0]


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, in process (its main() and helpers), without running it."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
