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
from native_examples import cmake_build, read_ppm, run, toolchain_missing, write_images

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
    out = tmp_path / "out.npy"
    proc = run(binary, export, images["content.npy"], images["class.npy"], out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (SIZE, SIZE, CHANNELS)
    err = float(np.max(np.abs(got.astype(np.float64) - reference)))
    assert err < TOL, f"{binary.name} vs lordkit.runtime.Transfer: max abs error {err:.3g}"


def test_ppm_round_trip(binary, export, images, reference, tmp_path):
    out_npy, out_ppm = tmp_path / "out.npy", tmp_path / "out.ppm"
    for out in (out_npy, out_ppm):
        proc = run(binary, export, images["content.ppm"], images["class.ppm"], out)
        assert proc.returncode == 0, proc.stderr
    from_npy = np.load(out_npy)  # PPM input reads as u8 / 255 in float32: the .npy input's numbers
    assert float(np.max(np.abs(from_npy - reference))) < TOL
    rounded = (np.clip(from_npy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # as lordkit.runtime.to_uint8_image
    assert np.array_equal(read_ppm(out_ppm, SIZE), rounded)


def write_garbage(path: Path, first: bytes = b"") -> Path:
    path.write_bytes(first + np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


def bad_case(case: str, export: Path, images: dict[str, Path], tmp: Path) -> tuple[list[object], str]:
    """Arguments for one bad input, and a word the error line must contain."""
    good = [export, images["content.npy"], images["class.npy"], tmp / "out.npy"]
    if case == "missing content":
        return [export, tmp / "missing.npy", *good[2:]], "missing.npy"
    if case == "missing export":
        return [tmp / "no-export", *good[1:]], "no-export"
    if case == "wrong size":
        np.save(tmp / "small.npy", np.zeros((16, 16, CHANNELS), np.float32))
        return [export, good[1], tmp / "small.npy", good[3]], "16x16x3"
    if case == "wrong channels":
        (tmp / "grey.pgm").write_bytes(f"P5\n{SIZE} {SIZE}\n255\n".encode() + bytes(SIZE * SIZE))
        return [export, tmp / "grey.pgm", *good[2:]], "grey.pgm"
    if case == "garbage npy":
        return [export, write_garbage(tmp / "garbage.npy"), *good[2:]], "garbage.npy"
    if case == "garbage ppm":
        return [export, good[1], write_garbage(tmp / "garbage.ppm"), good[3]], "garbage.ppm"
    if case in ("garbage onnx", "swapped onnx"):
        # A copy of the export whose content encoder file is garbage, or another network's file.
        bad = tmp / "bad-export"
        shutil.copytree(export, bad)
        if case == "garbage onnx":
            write_garbage(bad / "content_encoder.onnx", first=b"\x08")  # starts like an ONNX file
        else:
            shutil.copy(export / "content_encoder.onnx", bad / "generator.onnx")
        return [bad, *good[1:]], "content_encoder.onnx" if case == "garbage onnx" else "generator.onnx"
    if case == "float range":
        np.save(tmp / "bytes.npy", np.full((SIZE, SIZE, CHANNELS), 200.0, np.float32))
        return [export, tmp / "bytes.npy", *good[2:]], "[0, 1]"
    if case == "output type":
        return [*good[:3], tmp / "out.png"], ".png"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing content", "missing export", "wrong size", "wrong channels", "garbage npy",
                                  "garbage ppm", "garbage onnx", "swapped onnx", "float range", "output type"])
def test_bad_input_is_one_error_line(binary, export, images, tmp_path, case):
    args, word = bad_case(case, export, images, tmp_path)
    proc = run(binary, *args)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert word in lines[0], lines[0]
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "out.png").exists()


def test_usage(binary):
    proc = run(binary)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: ")
    proc = run(binary, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ")
