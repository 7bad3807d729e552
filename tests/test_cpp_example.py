"""examples/cpp: the libtorch program builds against the pip-installed torch and matches Python.

The program is built once per module into a pytest temp dir (about a minute: one translation unit
that includes libtorch's headers) and run on a real export of a tiny untrained model made with
tests/factories.py. Its float32 .npy output is compared with lordkit.runtime.Transfer (onnxruntime,
the three split networks), or when that is not importable with onnxruntime on transfer.onnx, or
else with transfer.pt in Python. Skipped when cmake, a C++ compiler or a build tool is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from native_examples import (bad_case, check_npy_output, check_one_error_line, check_ppm_round_trip, check_usage,
                             cmake_build, toolchain_missing, write_images)

pytestmark = pytest.mark.slow

SIZE = 32
CHANNELS = 3
TOL = 1e-4
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "examples" / "cpp"
EXE = "lordkit_transfer"


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    """Configure and build examples/cpp once per module; the path of the program."""
    reason = toolchain_missing()
    if reason:
        pytest.skip(reason)
    torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")
    build = tmp_path_factory.mktemp("cpp-build")
    return cmake_build(SRC, build, torch.utils.cmake_prefix_path, (EXE,))[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A real export (ONNX and TorchScript) of a tiny untrained 32x32 RGB model."""
    pytest.importorskip("torch", reason="torch (the train extra) is not installed")
    from factories import make_export, make_model_dir

    root = tmp_path_factory.mktemp("cpp-export")
    model_dir = make_model_dir(root / "model", img_size=SIZE, channels=CHANNELS)
    return make_export(model_dir, root / "export")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("cpp-images"), SIZE, CHANNELS)


def python_reference(export: Path, content: np.ndarray, klass: np.ndarray) -> tuple[str, np.ndarray]:
    """(backend, (H, W, C) float32) for one content and one class image (H, W, C) float32."""
    try:
        from lordkit.runtime import Transfer
    except ImportError:
        Transfer = None
    if Transfer is not None:
        t = Transfer(export, provider="cpu", warn=None)
        return "lordkit.runtime.Transfer", t.transfer([content], [klass])[0, 0]
    nchw = [np.ascontiguousarray(x.transpose(2, 0, 1)[None]) for x in (content, klass)]  # (1, C, H, W)
    try:
        import onnxruntime as ort
    except ImportError:
        import torch

        module = torch.jit.load(str(export / "transfer.pt"), map_location="cpu")
        with torch.inference_mode():
            out = module(*(torch.from_numpy(x) for x in nchw)).numpy()
        return "torch.jit transfer.pt", out[0].transpose(1, 2, 0)
    session = ort.InferenceSession(str(export / "transfer.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(["image"], {"content_image": nchw[0], "class_image": nchw[1]})[0]
    return "onnxruntime transfer.onnx", out[0].transpose(1, 2, 0)


@pytest.fixture(scope="module")
def reference(export, images) -> tuple[str, np.ndarray]:
    """(backend, (H, W, C) float32): the Python result for the test images."""
    return python_reference(export, np.load(images["content.npy"]), np.load(images["class.npy"]))


@pytest.mark.parametrize("model", ["dir", "pt"])
def test_npy_output_matches_python(binary, export, images, reference, tmp_path, model):
    backend, expected = reference
    out = tmp_path / "out.npy"
    check_npy_output(binary, export if model == "dir" else export / "transfer.pt", images, {backend: expected}, out,
                     TOL)
    got = np.load(out)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_ppm_round_trip(binary, export, images, reference, tmp_path):
    check_ppm_round_trip(binary, export, images, reference[1], tmp_path, TOL)


@pytest.mark.parametrize("case", ["missing content", "missing model", "wrong size", "wrong channels", "garbage npy",
                                  "garbage ppm", "garbage model", "float range", "output type"])
def test_bad_input_is_one_error_line(binary, export, images, tmp_path, case):
    args, word = bad_case(case, export, images, tmp_path, size=SIZE, channels=CHANNELS, suffix=".pt")
    check_one_error_line(binary, args, word, tmp_path)


def test_usage(binary):
    check_usage(binary)
