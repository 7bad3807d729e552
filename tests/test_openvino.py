"""The openvino backend (lordkit.runtime.openvino) on a real export of a tiny untrained model.

Transfer(backend="openvino") against onnxruntime on the same ONNX files: fp32 within 1e-4; bf16
within BF16_TOL of fp32 (skipped on CPUs without bf16); int8 (the export's *.int8.onnx) within
INT8_TOL of onnxruntime's int8 run of the same file. The CLI, refusals and the missing-module path
are checked for one-line errors. Skipped when openvino (the `openvino` extra) or torch (needed to
make the export) is missing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed: pip install 'lordkit[openvino]'")

SIZE = 32
CHANNELS = 3
TOL = 1e-4  # fp32: the same graph in float32 on two engines
BF16_TOL = 2e-2  # bf16 (8-bit mantissa) vs fp32 on this tiny model's [0, 1] outputs; measured about 2e-3
INT8_TOL = 1e-3  # the same QDQ file on two engines: identical int8 arithmetic, float32 rounding apart


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """An ONNX export (fp32, .opt.onnx and int8) of a tiny untrained 32x32 RGB model."""
    pytest.importorskip("torch", reason="torch (the train extra) is needed to make the test export")
    from factories import make_export, make_model_dir

    from lordkit.export.quantize import quantize_export, smooth_noise_images

    root = tmp_path_factory.mktemp("openvino")
    model_dir = make_model_dir(root / "model", img_size=SIZE, channels=CHANNELS)
    out = make_export(model_dir, root / "export", torchscript=False)
    quantize_export(out, smooth_noise_images(12, SIZE, CHANNELS), n_holdout=4, batch_size=4)
    return out


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(3)
    images = [rng.random((SIZE, SIZE, CHANNELS), dtype=np.float32) for _ in range(3)]
    return images, [0, 2, images[1]]  # class-bank rows and a class image


@pytest.fixture
def content_png(tmp_path) -> Path:
    import cv2

    path = tmp_path / "content.png"
    cv2.imwrite(str(path), np.random.default_rng(4).integers(0, 256, (SIZE, SIZE, CHANNELS), dtype=np.uint8))
    return path


def _bf16_or_skip():
    import openvino as ov

    from lordkit.runtime.openvino import has_bf16

    if not has_bf16(ov.Core()):
        pytest.skip("this CPU has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16)")


def test_fp32_matches_onnxruntime(export, inputs):
    from lordkit.runtime import Transfer

    t = Transfer(export, backend="openvino", threads=1)
    got = t.transfer(*inputs)
    want = Transfer(export, threads=1).transfer(*inputs)
    assert got.shape == (3, 3, SIZE, SIZE, CHANNELS) and got.dtype == np.float32
    assert float(np.abs(got - want).max()) < TOL
    for network, model in t.models.items():
        assert model.path.name == f"{network}.onnx"  # the plain file (see OPTIMIZED_FILE)
        assert str(model.device) == "cpu" and model.io_binding is False
    assert t.models["generator"].input_names == ["content_code", "class_code"]
    assert t.models["generator"].compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


def test_bf16_runs_near_fp32(export, inputs):
    _bf16_or_skip()
    from lordkit.runtime import Transfer

    got = Transfer(export, backend="openvino", precision="bf16", threads=1).transfer(*inputs)
    want = Transfer(export, backend="openvino", threads=1).transfer(*inputs)
    err = float(np.abs(got - want).max())
    assert 0 < err < BF16_TOL, err  # > 0: bf16 was really used


def test_int8_runs_the_int8_files(export, inputs):
    from lordkit.runtime import Transfer

    t = Transfer(export, backend="openvino", precision="int8", threads=1)
    assert all(m.path.name.endswith(".int8.onnx") for m in t.models.values())
    got = t.transfer(*inputs)
    want = Transfer(export, precision="int8", threads=1).transfer(*inputs)
    assert float(np.abs(got - want).max()) < INT8_TOL


def test_one_call_at_a_time_from_threads(export):
    from lordkit.runtime import Transfer

    model = Transfer(export, backend="openvino", threads=1).models["generator"]
    rng = np.random.default_rng(5)
    feeds = [{"content_code": rng.standard_normal((b, 8), dtype=np.float32),
              "class_code": rng.standard_normal((b, 8), dtype=np.float32)} for b in (1, 3, 5, 2)]
    want = [model(**f) for f in feeds]
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, model(**feeds[k]))) for k in range(len(feeds))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(np.array_equal(got[k], want[k]) for k in range(len(feeds)))


def test_cli_transfer_on_openvino(export, cli, tmp_path, content_png):
    import cv2

    content = content_png
    out = tmp_path / "out.png"
    result = cli("transfer", content, "-m", export, "--class-id", "1", "--backend", "openvino", "--threads", "1",
                 "-o", out)
    assert result.exit_code == 0, result.output
    via_ort = tmp_path / "ort.png"
    assert cli("transfer", content, "-m", export, "--class-id", "1", "--threads", "1", "-o", via_ort).exit_code == 0
    a, b = cv2.imread(str(out)), cv2.imread(str(via_ort))
    assert a.shape == (SIZE, SIZE, CHANNELS) and int(np.abs(a.astype(int) - b).max()) <= 1  # 8-bit rounding


def test_refusals(export, cli, content_png):
    from conftest import one_line_error

    from lordkit.errors import BadInput, LordkitError
    from lordkit.runtime import Transfer

    args = ("transfer", content_png, "-m", export, "--class-id", "0", "-o", content_png.parent / "out.png")
    assert "the openvino backend runs fp32, bf16, int8, not fp16" in one_line_error(
        cli(*args, "--backend", "openvino", "--precision", "fp16"))
    assert "the onnxruntime backend runs fp32, fp16, int8, not bf16" in one_line_error(
        cli(*args, "--precision", "bf16"))
    assert "unknown backend 'openvin0'" in one_line_error(cli(*args, "--backend", "openvin0"))
    assert "unknown precision 'fp8'" in one_line_error(cli(*args, "--backend", "openvino", "--precision", "fp8"))
    with pytest.raises(LordkitError, match="unknown provider 'tpu'; use one of: auto, cpu, cuda, cuda:N"):
        Transfer(export, backend="openvino", provider="tpu")
    with pytest.raises(BadInput, match="not fp16"):
        Transfer(export, backend="openvino", precision="fp16")


def test_cuda_is_run_on_the_cpu_with_one_warning(export):
    from lordkit.runtime import Transfer

    warnings: list[str] = []
    t = Transfer(export, backend="openvino", provider="cuda:1", threads=1, warn=warnings.append)
    assert str(t.device) == "cpu"
    assert len(warnings) == 1 and "runs on the CPU" in warnings[0]


def test_bf16_refused_where_the_cpu_lacks_it(export, monkeypatch):
    from lordkit.errors import Unsupported
    from lordkit.runtime import Transfer, openvino

    monkeypatch.setattr(openvino, "has_bf16", lambda core: False)
    with pytest.raises(Unsupported, match="has no native bf16") as e:
        Transfer(export, backend="openvino", precision="bf16")
    assert "\n" not in str(e.value)


def test_missing_module(export, cli, monkeypatch, content_png):
    from conftest import one_line_error

    from lordkit.errors import Unsupported
    from lordkit.runtime import Transfer

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(Unsupported, match=r"pip install 'lordkit\[openvino\]'"):
        Transfer(export, backend="openvino")
    line = one_line_error(cli("transfer", content_png, "-m", export, "--class-id", "0", "-o", content_png.parent / "out.png",
                              "--backend", "openvino"))
    assert "pip install 'lordkit[openvino]'" in line


def test_load_errors_and_contract(export, tmp_path):
    import openvino as ov

    from lordkit.errors import LordkitError
    from lordkit.runtime.openvino import _ports, compile_file
    from lordkit.runtime.session import check_io

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(LordkitError, match="OpenVINO cannot load") as e:
        compile_file(ov.Core(), bad, "fp32", 1)
    assert "\n" not in str(e.value)
    compiled = compile_file(ov.Core(), export / "class_encoder.onnx", "fp32", 1)
    with pytest.raises(LordkitError, match="not a lordkit export: x.onnx has inputs"):
        check_io("x.onnx", "generator", _ports(compiled.inputs), _ports(compiled.outputs), SIZE, CHANNELS, 8, 8)
    with pytest.raises(LordkitError, match=r"expected tensor\(float\) \[batch, 3, 64, 64\]"):
        check_io("x.onnx", "class_encoder", _ports(compiled.inputs), _ports(compiled.outputs), 64, CHANNELS, 8, 8)


def test_module_imports_no_torch():
    code = "import sys, lordkit.runtime.openvino; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bench_rows(export, monkeypatch):
    from lordkit.bench import results_table, run_benchmark
    from lordkit.bench import runners

    kw = dict(batch_sizes=[1, 3], networks=["generator"], threads=1, warmup=1, iters=3, max_time_s=0.5, align=False,
              matmul_n=64)
    result = run_benchmark(export, backends=["ort-cpu", "ov-cpu", "ov-bf16", "ov-int8"], **kw)
    rows = {(r["backend"], r["batch"]): r for r in result["rows"]}
    assert rows[("ov-cpu", 3)]["status"] == "ok" and rows[("ov-cpu", 3)]["file"] == "generator.onnx"
    assert rows[("ov-int8", 1)]["status"] == "ok" and rows[("ov-int8", 1)]["file"] == "generator.int8.onnx"
    assert rows[("ov-cpu", 1)]["inference_precision"] == "f32"
    assert rows[("ov-bf16", 1)]["status"] in ("ok", "missing")  # missing on CPUs without bf16, with the reason
    results_table(result)  # the table takes the rows of the new engine
    # Without the module every OpenVINO row is reported missing with one line saying how to install it.
    monkeypatch.setattr(runners, "has_module", lambda name: name != "openvino")
    result = run_benchmark(export, backends=["ov-cpu"], **kw)
    assert {r["status"] for r in result["rows"]} == {"missing"}
    assert all(r["reason"] == "openvino is not installed (pip install 'lordkit[openvino]')" for r in result["rows"])
