"""The layering of docs/architecture.md, checked on the source: who may import what, and one home
for the export format's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"lordkit": REPO / "lordkit", "lordkit.cli": REPO / "cli", "lordkit.export": REPO / "export"}


def module_files() -> dict[str, Path]:
    """Installed module name -> source file, following pyproject's package-dir mapping."""
    out = {}
    for package, root in PACKAGE_DIRS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = module_files()


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = next(m for m, p in MODULES.items() if p == path) if path in MODULES.values() else ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def imported_from(prefix: str, path: Path) -> list[str]:
    return sorted(m for m in imports(path) if m == prefix or m.startswith(prefix + "."))


def files_under(*names: str) -> list[Path]:
    out = []
    for name in names:
        out += [p for m, p in MODULES.items() if m == name or m.startswith(name + ".")]
    assert out, names
    return sorted(set(out))


READ_MODELS_WITHOUT_TRAINING = ("lordkit.export", "lordkit.evaluation", "lordkit.bench", "lordkit.runtime",
                                "lordkit.modeldir", "lordkit.export_format")


@pytest.mark.parametrize("path", files_under(*READ_MODELS_WITHOUT_TRAINING), ids=lambda p: str(p.relative_to(REPO)))
def test_export_evaluation_bench_and_runtime_never_import_training(path):
    assert imported_from("lordkit.training", path) == []


@pytest.mark.parametrize("path", files_under("lordkit"), ids=lambda p: str(p.relative_to(REPO)))
def test_the_library_never_imports_the_command_line(path):
    if path.is_relative_to(REPO / "lordkit") and path.name != "__main__.py":  # `python -m lordkit` is the CLI
        assert imported_from("lordkit.cli", path) == []


@pytest.mark.parametrize("path", files_under("lordkit.runtime", "lordkit.export_format", "lordkit.imaging",
                                             "lordkit.serve", "lordkit.client"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_runtime_and_export_contract_are_torch_free(path):
    if path != REPO / "lordkit" / "runtime" / "torch_backend.py":  # --backend torch runs torch's package loader
        assert imported_from("torch", path) == []
    assert imported_from("lordkit.export", path) == []  # the exporter is above the runtime


def test_the_torch_backend_imports_torch_only_when_it_opens_an_export():
    import subprocess
    import sys

    code = ("import sys, lordkit.runtime, lordkit.runtime.backends, lordkit.runtime.torch_backend; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmark_scripts_are_thin_callers(path):
    assert imported_from("lordkit.cli", path) == []
    text = path.read_text(encoding="utf-8")
    assert "__path__" not in text and "sys.path" not in text


def test_export_format_name_is_defined_once():
    homes = [p for p in MODULES.values() if '"lordkit-export/1"' in p.read_text(encoding="utf-8")]
    assert [p.relative_to(REPO).as_posix() for p in homes] == ["lordkit/export_format.py"]


def test_network_names_are_defined_once():
    literal = '"content_encoder", "class_encoder", "generator"'
    homes = [p for p in MODULES.values() if literal in p.read_text(encoding="utf-8")]
    assert [p.relative_to(REPO).as_posix() for p in homes] == ["lordkit/export_format.py"]


def test_import_scanner_sees_nested_and_relative_imports(tmp_path):
    # The checks above are only as good as the scanner: it must see imports inside functions.
    src = MODULES["lordkit.cli.train"]
    assert "lordkit.cli.common" in imports(src)
    assert any(m.startswith("lordkit.training") for m in imports(src))


def test_every_package_is_installed():
    # pyproject lists packages by name: a new subpackage missing there works in an editable install only.
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert found - listed == set()
    assert {k: REPO / v for k, v in tool["package-dir"].items()} == PACKAGE_DIRS
