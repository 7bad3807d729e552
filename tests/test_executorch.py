"""ExecuTorch programs (lordkit.export.executorch_export) and examples/executorch, the C++ program
that runs them on ExecuTorch's runtime (no libtorch).

A tiny untrained model (tests/factories.py) is exported to ONNX and TorchScript, then each of its four
networks is lowered to `<network>.pte` beside them (XNNPACK delegate, dynamic batch 1 to 8). Each
program runs in ExecuTorch's Python runtime against the eager network; the C++ program is built once
per module against the executorch wheel's runtime and its float32 .npy output is compared with
lordkit.runtime.Transfer (onnxruntime) and the eager transfer network. Skipped when torch or
executorch (the executorch extra) is missing, and the C++ tests when cmake, a C++ compiler or a
build tool is missing.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from native_examples import (bad_case, check_npy_output, check_one_error_line, check_ppm_round_trip, check_usage,
                             cmake_build, example_inputs, run, toolchain_missing, transfer_references, write_images)

pytestmark = pytest.mark.slow

SIZE = 32
CHANNELS = 3
TOL = 1e-4
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "examples" / "executorch"
EXE = "lordkit_transfer_executorch"


def executorch_missing() -> str | None:
    """Why ExecuTorch cannot export and run here, or None."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch (the train extra) is not installed"
    from lordkit.export.executorch_export import check_executorch

    return check_executorch()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export dir, eager networks, manifest): ONNX + TorchScript export plus every network's .pte."""
    reason = executorch_missing()
    if reason:
        pytest.skip(reason)
    from factories import make_export, make_model_dir

    from lordkit.models import eager_networks
    from lordkit.modeldir import load_amortized

    root = tmp_path_factory.mktemp("executorch")
    model_dir = make_model_dir(root / "model", img_size=SIZE, channels=CHANNELS)
    t0 = time.perf_counter()
    export = make_export(model_dir, root / "export", executorch=True)  # lordkit export --executorch
    print(f"\nexported with four .pte programs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    manifest = json.loads((export / "manifest.json").read_text())
    nets = eager_networks(load_amortized(model_dir))
    return export, nets, manifest


@pytest.mark.parametrize("name", ["content_encoder", "class_encoder", "generator", "transfer"])
def test_program_matches_eager(exported, name):
    from lordkit.export.executorch_export import executorch_parity, file_name

    export, nets, manifest = exported
    errors = executorch_parity(nets[name], export / file_name(name), example_inputs(manifest, name), (1, 8))
    assert set(errors) == {1, 8} and max(errors.values()) < TOL, errors
    print(f"\n{name}.pte (onnx form): max abs error {errors}", file=sys.stderr)


def test_export_lists_programs_with_parity(exported):
    export, _, manifest = exported
    for name, entry in manifest["models"].items():
        file = entry["files"]["executorch"]
        assert file == f"{name}.pte" and file in manifest["sha256"]
        rows = [r for r in manifest["parity"] if r["file"] == file]
        assert {r["batch"] for r in rows} == {1, 3, 8} and all(r["backend"] == "executorch-cpu" for r in rows)
        assert max(r["max_abs_err"] for r in rows) < TOL


def test_program_carries_metadata_and_batch_bound(exported):
    import torch

    from lordkit.errors import LordkitError
    from lordkit.export.executorch_export import MAX_BATCH, load_executorch

    export, _, manifest = exported
    program = load_executorch(export / "transfer.pte")
    meta = program.metadata()
    assert meta["lordkit.model"] == "transfer" and meta["lordkit.format"] == "lordkit-export/1"
    assert json.loads(meta["lordkit.manifest"])["img_size"] == manifest["img_size"]
    assert program.max_batch() == MAX_BATCH
    too_many = example_inputs(manifest, "transfer", batch=MAX_BATCH + 1)
    with pytest.raises(LordkitError, match=f"at most {MAX_BATCH}"):
        program(*too_many)
    assert program(*example_inputs(manifest, "transfer", batch=MAX_BATCH)).shape[0] == MAX_BATCH
    assert isinstance(program(*example_inputs(manifest, "transfer", batch=1)), torch.Tensor)


def test_export_leaves_the_modules_form(exported):
    from lordkit.models import form_of

    _, nets, _ = exported
    assert all(form_of(net) == "cpu" for net in nets.values())


def test_int8_holds_its_bound(exported, tmp_path):
    """int8 through ExecuTorch's quantizer: within INT8_TOL of the float32 network (measured, printed)."""
    from lordkit.export.executorch_export import INT8_TOL, executorch_parity, export_executorch, file_name

    export, nets, manifest = exported
    calibration = [example_inputs(manifest, "transfer", batch=8, seed=s) for s in range(1, 5)]
    path = export_executorch(nets["transfer"], example_inputs(manifest, "transfer"), tmp_path / file_name("transfer", "int8"),
                             quantize="int8", calibration=calibration)
    errors = executorch_parity(nets["transfer"], path, example_inputs(manifest, "transfer"), (1, 8), tolerance=INT8_TOL)
    print(f"\ntransfer.int8.pte: max abs error {errors} (bound {INT8_TOL})", file=sys.stderr)
    assert path.stat().st_size < (export / file_name("transfer")).stat().st_size


def test_int8_programs_join_an_export(exported, tmp_path):
    """lordkit export --executorch --int8: every network's .int8.pte calibrated on images, recorded in
    the manifest with a quality row, images within INT8_TOL of float32 on held-out images."""
    import shutil

    from lordkit.export.executorch_export import INT8_TOL, load_executorch
    from lordkit.export.quantize import quantize_executorch, smooth_noise_images
    from lordkit.runtime import Bundle

    export, _, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    manifest = quantize_executorch(copy, smooth_noise_images(24, SIZE, CHANNELS), export.parent / "model",
                                   calibration_source="smooth noise")
    Bundle(copy)  # every file hashed against the rewritten manifest
    rows = {q["model"]: q for q in manifest["quality"] if q["backend"] == "executorch-cpu"}
    assert set(rows) == set(manifest["models"])
    for name, entry in manifest["models"].items():
        assert entry["files"]["executorch_int8"] == f"{name}.int8.pte" and f"{name}.int8.pte" in manifest["sha256"]
    assert rows["transfer"]["max_abs_err"] < INT8_TOL and rows["generator"]["max_abs_err"] < INT8_TOL
    assert load_executorch(copy / "transfer.int8.pte").metadata()["lordkit.model"] == "transfer"
    assert manifest["executorch_int8"]["calibration"]["source"] == "smooth noise"
    print("\n" + ", ".join(f"{n}.int8.pte max abs err {r['max_abs_err']:.3g}" for n, r in rows.items()), file=sys.stderr)


def test_int8_programs_need_the_float32_ones(tmp_path):
    from factories import make_export, make_model_dir

    from lordkit.errors import LordkitError
    from lordkit.export.quantize import quantize_executorch, smooth_noise_images

    model = make_model_dir(tmp_path / "model", img_size=SIZE, channels=CHANNELS)
    export = make_export(model, tmp_path / "export", torchscript=False)
    with pytest.raises(LordkitError, match="no ExecuTorch program for content_encoder; export with --executorch"):
        quantize_executorch(export, smooth_noise_images(8, SIZE, CHANNELS), model)


def test_refuses_bad_arguments(exported, tmp_path):
    from lordkit.export.executorch_export import export_executorch

    _, nets, manifest = exported
    x = example_inputs(manifest, "content_encoder")
    with pytest.raises(ValueError, match="batch of 2 or more"):
        export_executorch(nets["content_encoder"], example_inputs(manifest, "content_encoder", batch=1), tmp_path / "x.pte")
    with pytest.raises(ValueError, match=r"\.pte"):
        export_executorch(nets["content_encoder"], x, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="quantize"):
        export_executorch(nets["content_encoder"], x, tmp_path / "x.pte", quantize="int4")
    assert not list(tmp_path.iterdir())


def test_load_errors_are_one_line(tmp_path):
    reason = executorch_missing()
    if reason:
        pytest.skip(reason)
    from lordkit.errors import LordkitError
    from lordkit.export.executorch_export import load_executorch

    with pytest.raises(LordkitError, match="not found"):
        load_executorch(tmp_path / "missing.pte")
    garbage = tmp_path / "garbage.pte"
    garbage.write_bytes(b"not a program" * 50)
    with pytest.raises(LordkitError, match="garbage.pte") as info:
        load_executorch(garbage)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# examples/executorch


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    """Configure and build examples/executorch once per module (against the executorch wheel's C++
    runtime); the path of the program."""
    reason = toolchain_missing() or executorch_missing()
    if reason:
        pytest.skip(reason)
    import executorch

    package = Path(list(executorch.__path__)[0])
    if not (package / "lib" / "libexecutorch.so").is_file():
        pytest.skip(f"the executorch package at {package} ships no prebuilt C++ runtime (lib/libexecutorch.so)")
    build = tmp_path_factory.mktemp("executorch-build")
    return cmake_build(SRC, build, package, (EXE,))[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("executorch-images"), SIZE, CHANNELS)


@pytest.fixture(scope="module")
def references(exported, images) -> dict[str, np.ndarray]:
    """(H, W, C) float32 results for the test images: lordkit.runtime.Transfer and the eager network."""
    return transfer_references(exported[0], exported[1], images)


@pytest.mark.parametrize("model", ["dir", "pte"])
def test_cpp_npy_output_matches_python(binary, exported, images, references, tmp_path, model):
    export = exported[0]
    check_npy_output(binary, export if model == "dir" else export / "transfer.pte", images, references,
                     tmp_path / "out.npy", TOL, label="C++ (.pte)")


def test_cpp_ppm_round_trip(binary, exported, images, references, tmp_path):
    check_ppm_round_trip(binary, exported[0], images, references["eager"], tmp_path, TOL)


@pytest.mark.parametrize("case", ["missing content", "missing model", "wrong size", "other network",
                                  "garbage model", "output type"])
def test_cpp_bad_input_is_one_error_line(binary, exported, images, tmp_path, case):
    args, word = bad_case(case, exported[0], images, tmp_path, size=SIZE, channels=CHANNELS, suffix=".pte")
    check_one_error_line(binary, args, word, tmp_path)


def test_cpp_quotes_a_files_bytes_as_text(binary, exported, images, tmp_path):
    # ExecuTorch's message quotes a file's program identifier (bytes 4 to 8) when it is no program:
    # bytes that are not printable ASCII come out as \xNN, so the error stays one line of text.
    args, word = bad_case("garbage model", exported[0], images, tmp_path, size=SIZE, channels=CHANNELS,
                          suffix=".pte", garbage=b"ABCD\xff\x1b\x80\x07" + b"garbage" * 100)
    proc = run(binary, *args)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "\\xff\\x1b\\x80\\x07" in proc.stderr and "\x1b" not in proc.stderr, proc.stderr


def test_cpp_usage(binary):
    check_usage(binary)
