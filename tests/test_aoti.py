"""AOTInductor packages (lordkit.export.aoti) and examples/aoti, the C++ program that runs them.

A tiny untrained model (tests/factories.py) is exported to ONNX, TorchScript and `<network>.pt2`
packages (`lordkit export --aoti`: about half a minute per network on two cores, Inductor compiles
C++). Each package runs in Python against the eager network; the C++ program is built once
per module and its float32 .npy output is compared with lordkit.runtime.Transfer (onnxruntime) and
the eager transfer network. Skipped when torch, a C++ compiler, cmake or a build tool is missing.
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
                             cmake_build, compiler_missing, example_inputs, toolchain_missing, transfer_references,
                             write_images)

pytestmark = pytest.mark.slow

SIZE = 32
CHANNELS = 3
TOL = 1e-4
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "examples" / "aoti"
EXE = "lordkit_transfer_aoti"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export dir, eager networks, manifest): ONNX + TorchScript export plus every network's .pt2."""
    reason = compiler_missing()
    if reason:
        pytest.skip(f"AOTInductor compiles C++: {reason}")
    pytest.importorskip("torch", reason="torch (the train extra) is not installed")
    from factories import make_export, make_model_dir

    from lordkit.models import eager_networks
    from lordkit.modeldir import load_amortized

    root = tmp_path_factory.mktemp("aoti")
    model_dir = make_model_dir(root / "model", img_size=SIZE, channels=CHANNELS)
    t0 = time.perf_counter()
    export = make_export(model_dir, root / "export", aoti=True)  # lordkit export --aoti
    print(f"\nexported with four .pt2 packages in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    manifest = json.loads((export / "manifest.json").read_text())
    nets = eager_networks(load_amortized(model_dir))
    return export, nets, manifest


@pytest.mark.parametrize("name", ["content_encoder", "class_encoder", "generator", "transfer"])
def test_package_matches_eager(exported, name):
    from lordkit.export.aoti import aoti_parity, file_name
    from lordkit.models import form_of

    export, nets, manifest = exported
    errors = aoti_parity(nets[name], export / file_name(name), example_inputs(manifest, name), (1, 8))
    assert set(errors) == {1, 8} and max(errors.values()) < TOL, errors
    print(f"\n{name}.pt2 ({form_of(nets[name])} form): max abs error {errors}", file=sys.stderr)


def test_export_lists_packages_with_parity(exported):
    export, _, manifest = exported
    assert manifest["aoti_device"] == "cpu"
    for name, entry in manifest["models"].items():
        file = entry["files"]["aoti"]
        assert file == f"{name}.pt2" and file in manifest["sha256"]
        rows = [r for r in manifest["parity"] if r["file"] == file]
        assert {r["batch"] for r in rows} == {1, 3, 8} and all(r["backend"] == "aoti-cpu" for r in rows)
        assert max(r["max_abs_err"] for r in rows) < TOL


def test_torch_backend_matches_onnxruntime(exported):
    from lordkit.runtime import Transfer

    export, _, _ = exported
    rng = np.random.default_rng(3)
    images = [rng.random((SIZE, SIZE, CHANNELS), dtype=np.float32) for _ in range(3)]
    classes = [0, 2, images[1]]  # class-bank rows and a class image
    got = Transfer(export, backend="torch", threads=1).transfer(images, classes)
    want = Transfer(export, threads=1).transfer(images, classes)
    assert got.shape == (3, 3, SIZE, SIZE, CHANNELS)
    assert float(np.abs(got - want).max()) < TOL


def test_cli_transfer_on_the_torch_backend(exported, cli, tmp_path):
    export, _, _ = exported
    import cv2

    rng = np.random.default_rng(4)
    content = tmp_path / "content.png"
    cv2.imwrite(str(content), rng.integers(0, 256, (SIZE, SIZE, CHANNELS), dtype=np.uint8))
    out = tmp_path / "out.png"
    result = cli("transfer", content, "-m", export, "--class-id", "1", "--backend", "torch", "-o", out)
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out)).shape == (SIZE, SIZE, CHANNELS)


def test_torch_backend_refusals(exported, tmp_path, cli):
    from conftest import one_line_error

    from lordkit.errors import BadInput, Unsupported
    from lordkit.runtime import Transfer

    export, _, manifest = exported
    assert "unknown --aoti-device 'tpu'; use one of: cpu, cuda" in one_line_error(
        cli("export", "--model-name", "m", "--aoti", "--aoti-device", "tpu"))
    import cv2

    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((SIZE, SIZE, CHANNELS), np.uint8))
    assert "the torch backend runs fp32, not fp16" in one_line_error(
        cli("transfer", image, "-m", export, "--class-id", "0", "--backend", "torch", "--precision", "fp16",
            "-o", tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(Unsupported, match="compiled for the CPU"):
        Transfer(export, backend="torch", provider="cuda")
    with pytest.raises(BadInput, match="runs fp32, not int8"):
        Transfer(export, backend="torch", precision="int8")
    with pytest.raises(BadInput, match="unknown backend 'tflite'"):
        Transfer(export, backend="tflite")
    # The same export without its packages: the torch backend names the option that writes them.
    bare = tmp_path / "bare"
    shutil.copytree(export, bare)
    for entry in manifest["models"].values():
        (bare / entry["files"]["aoti"]).unlink()
    m = json.loads((bare / "manifest.json").read_text())
    for entry in m["models"].values():
        del m["sha256"][entry["files"].pop("aoti")]
    (bare / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Unsupported, match="re-export with --aoti"):
        Transfer(bare, backend="torch")
    Transfer(bare, threads=1)  # onnxruntime still runs it


def test_bench_times_the_packages_beside_the_other_engines(exported):
    from lordkit import bench

    export, _, _ = exported
    result = bench.run_benchmark(export, None, backends=["torchscript", "aoti", "ort-cpu"], networks=["generator"],
                                 batch_sizes=(1, 2), warmup=1, iters=2, max_time_s=5.0, threads=1, matmul_n=128,
                                 align=False)
    rows = {(r["backend"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(b, n) for b in ("torchscript", "aoti", "ort-cpu") for n in (1, 2)}
    for (backend, _), r in rows.items():
        assert r["status"] == "ok" and r["img_per_sec"] > 0, (backend, r.get("reason"))
    assert rows[("aoti", 2)]["file"] == "generator.pt2"


def test_package_carries_metadata(exported):
    from lordkit.export.aoti import load_aoti

    export, _, manifest = exported
    meta = load_aoti(export / "transfer.pt2").get_metadata()
    assert meta["lordkit.model"] == "transfer" and meta["lordkit.format"] == "lordkit-export/1"
    assert json.loads(meta["lordkit.manifest"])["img_size"] == manifest["img_size"]


def test_exported_form_is_restored(exported):
    from lordkit.models import form_of

    _, nets, _ = exported
    assert all(form_of(net) == "cpu" for net in nets.values())


def test_refuses_bad_arguments(exported, tmp_path):
    import torch

    from lordkit.export.aoti import export_aoti

    _, nets, manifest = exported
    with pytest.raises(ValueError, match="batch of 2 or more"):
        export_aoti(nets["content_encoder"], example_inputs(manifest, "content_encoder", batch=1), tmp_path / "x.pt2")
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_aoti(nets["content_encoder"], (torch.rand(2, 3, SIZE, SIZE),), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="form"):
        export_aoti(nets["content_encoder"], (torch.rand(2, 3, SIZE, SIZE),), tmp_path / "x.pt2", form="nchw")
    assert not list(tmp_path.iterdir())


def test_load_errors_are_one_line(tmp_path):
    pytest.importorskip("torch", reason="torch (the train extra) is not installed")
    from lordkit.errors import LordkitError
    from lordkit.export.aoti import load_aoti

    with pytest.raises(LordkitError, match="not found"):
        load_aoti(tmp_path / "missing.pt2")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip" * 50)
    with pytest.raises(LordkitError, match="garbage.pt2") as info:
        load_aoti(garbage)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# examples/aoti


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    """Configure and build examples/aoti once per module; the path of the program."""
    reason = toolchain_missing()
    if reason:
        pytest.skip(reason)
    torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")
    build = tmp_path_factory.mktemp("aoti-build")
    return cmake_build(SRC, build, torch.utils.cmake_prefix_path, (EXE,))[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("aoti-images"), SIZE, CHANNELS)


@pytest.fixture(scope="module")
def references(exported, images) -> dict[str, np.ndarray]:
    """(H, W, C) float32 results for the test images: lordkit.runtime.Transfer and the eager network."""
    return transfer_references(exported[0], exported[1], images)


@pytest.mark.parametrize("model", ["dir", "pt2"])
def test_cpp_npy_output_matches_python(binary, exported, images, references, tmp_path, model):
    export = exported[0]
    check_npy_output(binary, export if model == "dir" else export / "transfer.pt2", images, references,
                     tmp_path / "out.npy", TOL, label="C++ (.pt2)")


def test_cpp_ppm_round_trip(binary, exported, images, references, tmp_path):
    check_ppm_round_trip(binary, exported[0], images, references["eager"], tmp_path, TOL)


@pytest.mark.parametrize("case", ["missing content", "missing model", "wrong size", "other network",
                                  "garbage model", "output type"])
def test_cpp_bad_input_is_one_error_line(binary, exported, images, tmp_path, case):
    args, word = bad_case(case, exported[0], images, tmp_path, size=SIZE, channels=CHANNELS, suffix=".pt2",
                          garbage=b"\x00garbage" * 100)
    check_one_error_line(binary, args, word, tmp_path)


def test_cpp_usage(binary):
    check_usage(binary)
