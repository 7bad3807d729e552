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
from native_examples import cmake_build, read_ppm, run, toolchain_missing, write_images

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
    out = tmp_path / "out.npy"
    model_arg = export if model == "dir" else export / "transfer.pt"
    proc = run(binary, model_arg, images["content.npy"], images["class.npy"], out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (SIZE, SIZE, CHANNELS)

    backend, expected = reference
    err = float(np.max(np.abs(got.astype(np.float64) - expected)))
    assert err < TOL, f"C++ vs {backend}: max abs error {err:.3g}"
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_ppm_round_trip(binary, export, images, reference, tmp_path):
    out_npy, out_ppm = tmp_path / "out.npy", tmp_path / "out.ppm"
    for out in (out_npy, out_ppm):
        proc = run(binary, export, images["content.ppm"], images["class.ppm"], out)
        assert proc.returncode == 0, proc.stderr
    got = read_ppm(out_ppm, SIZE)
    # PPM input reads as u8 / 255 in float32, the same numbers as the .npy input: same output.
    from_npy = np.load(out_npy)
    assert float(np.max(np.abs(from_npy - reference[1]))) < TOL
    rounded = (np.clip(from_npy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # as lordkit.runtime.to_uint8_image
    assert np.array_equal(got, rounded)


def write_garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


def bad_case(case: str, export: Path, images: dict[str, Path], tmp: Path) -> tuple[list[object], str]:
    """Arguments for one bad input, and a word the error line must contain."""
    good = [export, images["content.npy"], images["class.npy"], tmp / "out.npy"]
    if case == "missing content":
        return [export, tmp / "missing.npy", *good[2:]], "missing.npy"
    if case == "missing model":
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
    if case == "garbage model":
        return [write_garbage(tmp / "garbage.pt"), *good[1:]], "garbage.pt"
    if case == "float range":
        np.save(tmp / "bytes.npy", np.full((SIZE, SIZE, CHANNELS), 200.0, np.float32))
        return [export, tmp / "bytes.npy", *good[2:]], "[0, 1]"
    if case == "output type":
        return [*good[:3], tmp / "out.png"], ".png"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing content", "missing model", "wrong size", "wrong channels", "garbage npy",
                                  "garbage ppm", "garbage model", "float range", "output type"])
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
