"""examples/openvino: the C++ and C programs build against the pip-installed OpenVINO and match Python.

Both programs are built once per module into a pytest temp dir (a few seconds: OpenVINO's headers
are light) and run on a real ONNX export of a tiny untrained model made with tests/factories.py.
Their float32 .npy output is compared with lordkit.runtime.Transfer (onnxruntime), the PPM output
with the .npy output rounded as lordkit.runtime.to_uint8_image, and every bad input must give one
`error: ...` line and exit code 1. Skipped when openvino (the `openvino` extra), torch (to make the
export), cmake, a C / C++ compiler or make / ninja is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from native_examples import (bad_case, check_npy_output, check_one_error_line, check_ppm_round_trip, check_usage,
                             cmake_build, toolchain_missing, write_garbage, write_images)

pytestmark = pytest.mark.slow

SIZE = 32
CHANNELS = 3
TOL = 1e-4
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "examples" / "openvino"
PROGRAMS = ("lordkit_transfer_openvino", "lordkit_transfer_openvino_c")


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """Configure and build examples/openvino once per module; the build dir."""
    reason = toolchain_missing(c=True)
    if reason:
        pytest.skip(reason)
    openvino = pytest.importorskip("openvino", reason="openvino is not installed: pip install 'lordkit[openvino]'")
    prefix = Path(openvino.__file__).parent / "cmake"
    if not (prefix / "OpenVINOConfig.cmake").is_file():
        pytest.skip(f"this openvino wheel has no CMake config ({prefix})")
    build = tmp_path_factory.mktemp("openvino-build")
    cmake_build(SRC, build, prefix, PROGRAMS)
    return build


@pytest.fixture(params=PROGRAMS)
def binary(request, build) -> Path:
    return build / request.param


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A real ONNX export of a tiny untrained 32x32 RGB model."""
    pytest.importorskip("torch", reason="torch (the train extra) is needed to make the test export")
    from factories import make_export, make_model_dir

    root = tmp_path_factory.mktemp("openvino-export")
    model_dir = make_model_dir(root / "model", img_size=SIZE, channels=CHANNELS)
    return make_export(model_dir, root / "export", torchscript=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("openvino-images"), SIZE, CHANNELS)


@pytest.fixture(scope="module")
def reference(export, images) -> np.ndarray:
    """lordkit.runtime.Transfer (onnxruntime) on the test images, (H, W, C) float32."""
    from lordkit.runtime import Transfer

    t = Transfer(export, provider="cpu", threads=1, warn=None)
    return t.transfer([np.load(images["content.npy"])], [np.load(images["class.npy"])])[0, 0]


def test_npy_output_matches_python(binary, export, images, reference, tmp_path):
    check_npy_output(binary, export, images, {"lordkit.runtime.Transfer": reference}, tmp_path / "out.npy", TOL,
                     label=binary.name)


def test_ppm_round_trip(binary, export, images, reference, tmp_path):
    check_ppm_round_trip(binary, export, images, reference, tmp_path, TOL)


def bad_export(case: str, export: Path, images: dict[str, Path], tmp: Path) -> tuple[list[object], str]:
    """A copy of the export whose content encoder file is garbage, or another network's file."""
    bad = tmp / "bad-export"
    shutil.copytree(export, bad)
    if case == "garbage onnx":
        write_garbage(bad / "content_encoder.onnx", first=b"\x08")  # starts like an ONNX file
    else:
        shutil.copy(export / "content_encoder.onnx", bad / "generator.onnx")
    return [bad, images["content.npy"], images["class.npy"], tmp / "out.npy"], (
        "content_encoder.onnx" if case == "garbage onnx" else "generator.onnx")


@pytest.mark.parametrize("case", ["missing content", "missing model", "wrong size", "wrong channels", "garbage npy",
                                  "garbage ppm", "garbage onnx", "swapped onnx", "float range", "output type"])
def test_bad_input_is_one_error_line(binary, export, images, tmp_path, case):
    if case in ("garbage onnx", "swapped onnx"):
        args, word = bad_export(case, export, images, tmp_path)
    else:
        args, word = bad_case(case, export, images, tmp_path, size=SIZE, channels=CHANNELS)
    check_one_error_line(binary, args, word, tmp_path)


def test_usage(binary):
    check_usage(binary)
