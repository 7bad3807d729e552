"""lordkit.bench, export.quantize, `lordkit bench` and benchmarks/latency.py on a tiny export: rows, JSON, PNG,
FLOPs, int8 files, CLI.

No timing is asserted (speed is measured by the benchmarks): only that every backend that can run
here runs, that what is written has the promised shape, and that bad input is one line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import typer
from conftest import load_benchmark, one_line_error
from factories import make_export, make_model_dir
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lordkit import bench
from lordkit.bench import labels, machine, plot, target, timing
from lordkit.config import ModelConfig
from lordkit.errors import LordkitError
from lordkit.export.quantize import quantize_export, smooth_noise_images
from lordkit.runtime import Bundle

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

SIZE = 32
TEMPLATE = [[0.37, 0.45], [0.63, 0.45], [0.5, 0.6], [0.4, 0.75], [0.6, 0.75]]
REPO = Path(__file__).resolve().parents[1]
FAST = dict(batch_sizes=(1, 2), warmup=1, iters=2, max_time_s=5.0, threads=1, matmul_n=256)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny face model, exported in every format (fp16 too) and quantized to int8."""
    root = tmp_path_factory.mktemp("bench")
    model = make_model_dir(root / "model", img_size=SIZE, face_template=TEMPLATE)
    out = make_export(model, root / "export", fp16=True, batch_sizes=(2,))
    quantize_export(out, smooth_noise_images(12, SIZE, 3), n_holdout=4, batch_size=4)
    return model, out


# ---------------------------------------------------------------------------------------------
# int8.


def test_quantize_writes_int8_files_listed_and_hashed(exported):
    _, out = exported
    man = json.loads((out / "manifest.json").read_text())
    for net in bench.NETWORKS:
        name = f"{net}.int8.onnx"
        assert man["models"][net]["files"]["onnx_int8"] == name
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == man["sha256"][name]
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model)
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
        props = {p.key: p.value for p in model.metadata_props}
        assert props["lordkit.format"] == "lordkit-export/1" and props["lordkit.model"] == net
        # Runs in onnxruntime with the float32 file's inputs and output shape.
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        feeds = bench.make_inputs(net, 3, SIZE, 3, man["content_dim"], man["class_dim"])
        got = sess.run(None, feeds)[0]
        ref = ort.InferenceSession(str(out / f"{net}.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert got.shape == ref.shape and got.dtype == np.float32 and np.isfinite(got).all()
    assert man["int8"]["format"] == "QDQ" and man["int8"]["calibration"]["n_images"] == 9
    rows = {q["model"]: q for q in man["quality"]}
    assert set(rows) == set(bench.NETWORKS)
    for q in rows.values():
        assert q["n_images"] == 3 and q["psnr_db"] > 0 and "target_psnr_db" not in q
    # The export is still one the runtime opens, hashes included.
    Bundle(out, verify="all")


def test_quantize_refuses_to_overwrite_and_bad_calibration(exported, tmp_path):
    _, out = exported
    with pytest.raises(LordkitError, match="already exists; pass --force"):
        quantize_export(out, smooth_noise_images(8, SIZE, 3), models=["content_encoder"])
    with pytest.raises(LordkitError, match="export takes 32x32x3"):
        quantize_export(out, smooth_noise_images(8, 64, 3), force=True)
    with pytest.raises(LordkitError, match="uint8"):
        quantize_export(out, np.zeros((8, SIZE, SIZE, 3), np.float32), force=True)
    with pytest.raises(LordkitError, match="unknown network"):
        quantize_export(out, smooth_noise_images(8, SIZE, 3), models=["decoder"], force=True)


def test_quantize_qoperator_per_channel(exported, tmp_path):
    """The other format, per channel, from a copy: replaces only what it is asked for, hashes updated."""
    import shutil

    _, out = exported
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    before = json.loads((copy / "manifest.json").read_text())
    man = quantize_export(copy, smooth_noise_images(8, SIZE, 3), models=["generator"], quant_format="qoperator",
                          per_channel=True, force=True, n_holdout=2)
    model = onnx.load(str(copy / "generator.int8.onnx"))
    assert "QLinearConv" in {n.op_type for n in model.graph.node}
    assert man["sha256"]["generator.int8.onnx"] == hashlib.sha256((copy / "generator.int8.onnx").read_bytes()).hexdigest()
    assert man["sha256"]["content_encoder.int8.onnx"] == before["sha256"]["content_encoder.int8.onnx"]
    assert [q["model"] for q in man["quality"]].count("generator") == 1
    assert json.loads((copy / "manifest.json").read_text()) == man
    assert not [p for p in copy.iterdir() if p.name.startswith(".")]  # no temporary files left


# ---------------------------------------------------------------------------------------------
# FLOPs.


def _tiny_graph() -> onnx.ModelProto:
    """x (B,3,8,8) -> Conv 3->4 k3 pad1 -> grouped Conv 4->4 k3 group 2 -> ConvTranspose 4->2 k2 s2
    -> Flatten -> Gemm (transB) to 5 -> MatMul with (5, 6)."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=2),
        helper.make_node("ConvTranspose", ["c2", "w3"], ["c3"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["c3"], ["f"]),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "w5"], ["y"]),
    ]
    inits = [init("w1", (4, 3, 3, 3)), init("w2", (4, 2, 3, 3)), init("b2", (4,)), init("w3", (4, 2, 2, 2)),
             init("w4", (5, 2 * 16 * 16)), init("b4", (5,)), init("w5", (5, 6))]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_flops_equal_a_hand_count():
    model = _tiny_graph()
    # Multiply-accumulates per image, by hand:
    conv1 = (4 * 8 * 8) * (3 * 3 * 3)  # each output element: C_in * kh * kw products
    conv2 = (4 * 8 * 8) * (2 * 3 * 3)  # grouped: C_in / group = 2 inputs per output
    deconv = (4 * 8 * 8) * (2 * 2 * 2)  # each input element scatters into C_out * kh * kw outputs
    gemm = 512 * 5
    matmul = 5 * 6
    for batch in (1, 3):
        got = bench.count_flops(model, batch)
        assert got["by_op"] == {"Conv": 2 * batch * (conv1 + conv2), "ConvTranspose": 2 * batch * deconv,
                                "Gemm": 2 * batch * gemm, "MatMul": 2 * batch * matmul}
        assert got["flops"] == 2 * got["macs"] == 2 * batch * (conv1 + conv2 + deconv + gemm + matmul)
        assert got["uncounted"] == []


def test_flops_of_the_exported_generator_scale_with_batch(exported):
    _, out = exported
    one, four = bench.count_flops(out / "generator.onnx", 1), bench.count_flops(out / "generator.onnx", 4)
    assert one["flops"] > 0 and four["flops"] == 4 * one["flops"] and not one["uncounted"]
    assert set(one["by_op"]) == {"Conv", "Gemm"}


# ---------------------------------------------------------------------------------------------
# The benchmark.


def test_bench_runs_every_available_backend_and_writes_json_and_png(exported, tmp_path, monkeypatch):
    model, out = exported
    import torch

    # torch.compile's own compile takes ~30 s here: stand it in with the eager module so that this
    # test covers the compile row's logic (first call timed apart) in a second, not inductor.
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    backends = [b for b in bench.BACKENDS if b != "aoti"]  # tests/test_aoti.py times the .pt2 row (a slow compile)
    result = bench.run_benchmark(out, model, backends=backends, **FAST)
    rows = {(r["network"], r["backend"], r["batch"]): r for r in result["rows"]}
    assert len(rows) == len(result["rows"]) == 4 * len(backends) * 2
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    for (net, backend, batch), r in rows.items():
        if backend.startswith("ort-cuda") and not cuda:
            assert r["status"] == "missing" and "CUDAExecutionProvider" in r["reason"]
            continue
        assert r["status"] == "ok", (net, backend, r.get("reason"))
        assert r["n_iters"] == 2 and r["img_per_sec"] > 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["gflops"] > 0 and r["peak_fraction"] > 0
        assert r["speedup_vs_eager"] > 0 and r["speedup_vs_reference"] > 0
    assert "compile_s" in rows[("generator", "compile", 1)]
    assert rows[("generator", "int8", 2)]["file"] == "generator.int8.onnx"
    assert rows[("generator", "ort-cpu-opt", 2)]["file"] == "generator.opt.onnx"
    assert result["matmul"]["peak"]["cpu-fp32"] > 0
    assert {"onnxruntime-cpu", "torch-cpu"} <= set(result["matmul"]["gflops"])
    assert result["flops"]["generator"]["per_image"] > 0
    assert result["env"]["cpu"] and result["env"]["threads"] == 1 and result["env"]["versions"]["onnxruntime"]
    assert [q["model"] for q in result["quality"]] == list(bench.NETWORKS)
    assert "targets" not in result
    align = result["alignment"]
    if align["status"] == "ok":  # needs dlib's model files and scikit-image's astronaut
        assert align["n_faces"] >= 1 and align["latency_ms"]["total"]["p50"] > 0
        assert set(align["latency_ms"]) == {"total", "detect", "landmarks", "warp"}
    else:
        assert align["reason"]

    json_path, png_path = bench.write_results(result, tmp_path / "res", "run")
    saved = json.loads(json_path.read_text())
    assert set(saved) >= {"format", "created", "env", "settings", "model", "flops", "matmul", "rows", "alignment",
                          "quality"}
    assert saved["format"] == bench.FORMAT == "lordkit-bench/2" and len(saved["rows"]) == len(result["rows"])
    if importlib.util.find_spec("matplotlib") is not None:
        img = cv2.imread(str(png_path), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 600 and img.shape[1] > 800 and img.std() > 10

    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(bench.results_table(result))
    text = console.export_text()
    assert "generator" in text and "int8" in text and "face align" in text
    # One network in an 80-column terminal: every number whole (no ellipsis), notes under the table.
    one = dict(result, rows=[r for r in result["rows"] if r["network"] == "generator"])
    narrow = Console(width=80, record=True, file=open(os.devnull, "w"))
    narrow.print(bench.results_table(one))
    text = narrow.export_text()
    assert "…" not in text and "network: generator" in text
    for r in one["rows"]:
        if r["status"] == "ok":
            assert labels.fmt_num(r["latency_ms"]["p50"]) in text
    if result["alignment"]["status"] == "ok":
        assert "] dlib + OpenCV: detect" in text and "[1] " in text


def test_bench_without_model_dir_and_with_a_different_model(exported, tmp_path):
    model, out = exported
    kw = dict(FAST, backends=["eager", "ort-cpu"], networks=["generator"], batch_sizes=[1], align=False)
    result = bench.run_benchmark(out, None, **kw)
    eager, ort_row = result["rows"]
    assert eager["status"] == "missing" and "model dir" in eager["reason"]
    assert ort_row["status"] == "ok" and "speedup_vs_eager" not in ort_row
    other = make_model_dir(tmp_path / "other", img_size=SIZE, seed=5)
    lines = []
    result = bench.run_benchmark(out, other, log=lines.append, **kw)
    assert result["rows"][0]["status"] == "missing" and "does not match the export" in result["rows"][0]["reason"]
    assert any("does not match" in line for line in lines)


def test_io_binding_path_and_slow_rows_are_skipped(exported):
    _, out = exported
    result = bench.run_benchmark(out, None, backends=["ort-cpu"], networks=["transfer"], batch_sizes=[1, 1024],
                                 warmup=0, iters=2, max_time_s=1e-4, threads=1, io_binding=True, align=False,
                                 matmul_n=256)
    small, big = result["rows"]
    assert small["status"] == "ok" and small["io_binding"] is True
    assert big["status"] == "skipped" and "--max-time" in big["reason"]


def test_ort_settings_sweep(exported):
    _, out = exported
    feeds = bench.make_inputs("generator", 2, SIZE, 3, 8, 8)
    rows = bench.ort_settings_sweep(out / "generator.onnx", feeds, threads=2, warmup=0, iters=1)
    assert [r["setting"] for r in rows] == ["default (all, spinning)", "optimisation: disable", "optimisation: basic",
                                            "optimisation: extended", "no spinning", "1 thread"]
    assert all(r["img_per_sec"] > 0 for r in rows)


def test_load_warning_counts_other_processes_only():
    def result(share, mm_start=100.0, mm_end=100.0):
        return {"env": {"physical_cores": 2, "threads": 2, "others_cpu_share": share},
                "matmul": {"gflops_start": {"onnxruntime-cpu": mm_start}, "gflops_end": {"onnxruntime-cpu": mm_end}}}

    assert bench.load_warning(result(0.05)) is None
    assert bench.load_warning(result(None)) is None
    assert "other processes used 40%" in bench.load_warning(result(0.4))
    assert "matmul rate was 40% lower" in bench.load_warning(result(0.0, mm_end=60.0))


PROC_STAT = """cpu  100 20 30 400 50 6 7 8 0 0
cpu0 50 10 15 200 25 3 3 4 0 0
intr 12345
"""


def test_busy_ticks_parses_proc_stat():
    # user + nice + system + irq + softirq + steal; idle (400) and iowait (50) are not busy.
    assert machine.busy_ticks(PROC_STAT) == 100 + 20 + 30 + 6 + 7 + 8
    assert machine.busy_ticks("cpu  1 2 3 4\n") == 1 + 2 + 3  # older kernels: fewer columns
    assert machine.busy_ticks("intr 1 2\n") is None and machine.busy_ticks("") is None


def test_others_cpu_share_is_the_machines_busy_time_minus_ours():
    start = {"busy_s": 100.0, "own_s": 10.0, "wall_s": 50.0, "cpus": 2}

    def share(busy_s, own_s, wall_s=52.0):
        return machine.others_cpu_share(start, {"busy_s": busy_s, "own_s": own_s, "wall_s": wall_s, "cpus": 2})

    # 4 s busy in 2 s of wall time on 2 CPUs, 3 of them ours: others took 1 of the 4 CPU-seconds.
    assert share(104.0, 13.0) == pytest.approx(0.25)
    assert share(103.0, 13.0) == 0.0  # only our work
    assert share(102.0, 13.0) == 0.0  # never below 0 (ticks round: our time can exceed the machine's)
    assert share(104.0, 10.0) == pytest.approx(1.0)  # the whole machine busy with others
    assert share(104.0, 13.0, wall_s=50.0) is None  # no time passed
    assert machine.others_cpu_share(None, start) is None and machine.others_cpu_share(start, None) is None


def test_time_calls_budget_and_percentiles():
    calls = []
    times, n_warm = timing.time_calls(lambda: calls.append(1), lambda: None, warmup=2, iters=50, max_time_s=1e-9)
    assert n_warm == 1 and len(times) == timing.MIN_TIMED_ITERS  # budget spent: warm-up once, the minimum timed
    p = timing.percentile_ms([0.001, 0.002, 0.003])
    assert p["p50"] == pytest.approx(2.0) and p["min"] == pytest.approx(1.0) and p["max"] == pytest.approx(3.0)


def test_bench_onnx_rows_without_torch(exported):
    """The library imports no torch: ONNX backends and the matmul rate run on a torch-free box."""
    _, out = exported
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from lordkit import bench\n"
        "r = bench.run_benchmark(sys.argv[1], None, backends=['ort-cpu', 'int8', 'eager', 'torchscript'], "
        "networks=['content_encoder'], batch_sizes=[1], warmup=0, iters=2, threads=1, align=False, matmul_n=256)\n"
        "print(*[x['status'] for x in r['rows']], sorted(r['matmul']['gflops']))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["ok", "ok", "missing", "missing", "['onnxruntime-cpu']"]


def _tiny_result(rows):
    return {"env": {"threads": 1, "cpu": "cpu", "load_average_start": [0.1, 0, 0]},
            "model": {"model_name": "m", "img_size": 32},
            "settings": {"networks": ["generator", "transfer"], "backends": ["eager", "ort-cpu"], "batch_sizes": [1, 8]},
            "rows": rows}


def _ok_row(network, backend, batch, ms):
    return {"network": network, "backend": backend, "batch": batch, "status": "ok", "latency_ms": {"p50": ms},
            "img_per_sec": batch / (ms / 1e3)}


def _no_matplotlib(monkeypatch):
    """Imports of matplotlib (and of its submodules already loaded) fail, as on a box without it."""
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_plot_is_a_png_with_a_pair_of_charts_per_network(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_ok_row(n, b, batch, ms * batch) for n in ("generator", "transfer") for b, ms in (("eager", 3.0),
            ("ort-cpu", 1.5)) for batch in (1, 8)]
    png = plot.plot_png(_tiny_result(rows))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] > 1000 and img.shape[0] > 600 and img.std() > 10  # two networks: two rows of charts
    one = cv2.imdecode(np.frombuffer(plot.plot_png(_tiny_result(rows[:4])), np.uint8), cv2.IMREAD_COLOR)
    assert one.shape[1] == img.shape[1] and one.shape[0] < img.shape[0]


def test_plot_handles_no_measured_rows_and_narrow_ranges():
    pytest.importorskip("matplotlib")
    missing = [{"network": "generator", "backend": "eager", "batch": 1, "status": "missing", "reason": "x"}]
    assert plot.plot_png(_tiny_result(missing))[:4] == b"\x89PNG"
    lo, hi = plot._log_range([2.0, 3.0])
    assert lo < 2.0 and hi > 3.0 and hi / lo >= 10  # a log axis at least a decade tall, so ticks show


def test_write_results_without_matplotlib_writes_the_json_only(tmp_path, monkeypatch):
    _no_matplotlib(monkeypatch)
    result = _tiny_result([_ok_row("generator", "eager", 1, 2.0)])
    assert plot.plot_png(result) is None
    json_path, png_path = bench.write_results(result, tmp_path, "run")
    assert png_path is None and json.loads(json_path.read_text())["rows"] == result["rows"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_random_model_configs():
    ref = target.reference_config(64)
    assert (ref.content_dim, ref.class_dim, ref.n_adain_layers, ref.adain_dim) == (128, 256, 4, 256)
    assert target.reference_config(256).n_adain_layers == ModelConfig.min_adain_layers(256) > 4
    tiny = target.reference_config(64, tiny=True)
    assert tiny.content_dim == 8 and tiny.n_adain_layers == ModelConfig.min_adain_layers(64) > 2
    with pytest.raises(LordkitError, match="power of two"):
        target.check_random_target(48)


# ---------------------------------------------------------------------------------------------
# The command line.


def bench_app() -> typer.Typer:
    """The real app when the bench command is registered there, else this module's command on its own."""
    from lordkit.cli import app as cli_app

    if any(c.name == "bench" for c in cli_app.app.registered_commands):
        return cli_app.app
    from lordkit.cli.bench import register

    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context, base_dir: Path = typer.Option(None, "--base-dir")) -> None:
        ctx.obj = {"base_dir": base_dir}

    register(app)
    return app


@pytest.fixture
def run_bench(base):
    runner = CliRunner()
    app = bench_app()
    return lambda *args: runner.invoke(app, ["--base-dir", str(base), "bench", *map(str, args)])


def test_cli_bench_writes_table_json_and_png(run_bench, exported, tmp_path):
    model, out = exported
    r = run_bench("--model", out, "--model-dir", model, "--batch-sizes", "1,8", "--iters", "2", "--warmup", "0",
                  "--backends", "eager,ort-cpu-opt,int8", "--models", "content_encoder,generator", "--threads", "1",
                  "--no-align", "--matmul-size", "256", "--out", tmp_path / "res")
    assert r.exit_code == 0, r.output + r.stderr
    assert "ort-cpu-opt" in r.stdout and "results:" in r.stdout and "x eager" in r.stdout
    # Measured ratios only: no acceptance lines, no pass or fail.
    assert not re.search(r"\btargets?\b|\bmet\b", r.output, re.IGNORECASE), r.output
    (json_file,) = (tmp_path / "res").glob("bench-*.json")
    saved = json.loads(json_file.read_text())
    assert {row["backend"] for row in saved["rows"]} == {"eager", "ort-cpu-opt", "int8"}
    assert all(row["status"] == "ok" for row in saved["rows"])
    if importlib.util.find_spec("matplotlib") is not None:
        assert cv2.imread(str(json_file.with_suffix(".png"))) is not None
        assert f"plot: {json_file.with_suffix('.png')}" in r.stdout


def test_cli_bench_without_matplotlib_says_what_to_install(run_bench, exported, tmp_path, monkeypatch):
    _no_matplotlib(monkeypatch)
    _, out = exported
    r = run_bench("--model", out, "--batch-sizes", "1", "--iters", "1", "--warmup", "0", "--backends", "ort-cpu",
                  "--models", "generator", "--threads", "1", "--no-align", "--matmul-size", "256",
                  "--out", tmp_path / "res")
    assert r.exit_code == 0, r.output + r.stderr
    (json_file,) = (tmp_path / "res").iterdir()
    assert json_file.suffix == ".json"
    assert f"plot: {bench.PLOT_HINT}" in r.stdout and "pip install 'lordkit[plot]'" in r.stdout


def test_cli_bench_finds_the_model_dir_by_name(run_bench, exported, base, tmp_path):
    import shutil

    model, out = exported
    shutil.copytree(out, base / "exports" / "tiny")
    shutil.copytree(model, base / "models" / "model")  # the manifest's model_name
    r = run_bench("--model", "tiny", "--batch-sizes", "1", "--iters", "1", "--warmup", "0", "--backends", "eager",
                  "--models", "generator", "--threads", "1", "--no-align", "--matmul-size", "256", "--json")
    assert r.exit_code == 0, r.output + r.stderr
    saved = json.loads(r.stdout)
    assert saved["rows"][0]["status"] == "ok" and saved["model"]["model_dir"].endswith("model")


@pytest.mark.parametrize("args, expected", [
    (["--model", "/nonexistent/export"], "export not found"),
    (["--model", "nosuchname"], "export not found: nosuchname"),
    (["--backends", "eager,tensorrt"], "unknown backend 'tensorrt'"),
    (["--models", "decoder"], "unknown network 'decoder'"),
    (["--batch-sizes", "1,x"], "batch sizes must be integers"),
    (["--batch-sizes", "0"], "batch sizes must be >= 1"),
    (["--iters", "0"], "--iters >= 1"),
    (["--img-size", "48"], "model.img_size must be a power of two"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--align-image", "/nonexistent.png"], "image not found"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--matmul-size", "8"], "--matmul-size must be >= 16"),
    (["--model-dir", "somewhere"], "--model-dir goes with --model"),
])
def test_cli_bad_inputs_are_one_line_errors(run_bench, args, expected):
    line = one_line_error(run_bench(*args))
    assert expected in line, line


def test_cli_img_size_must_match_the_export(run_bench, exported):
    _, out = exported
    line = one_line_error(run_bench("--model", out, "--img-size", "64"))
    assert "--img-size 64 does not apply" in line


def test_latency_script_runs_the_package_and_the_ort_sweep(exported, tmp_path, monkeypatch):
    """benchmarks/latency.py, in process: the same result as the command plus the onnxruntime sweep, and
    one line per run appended to its result file (here under LORDKIT_RESULTS_DIR, not the committed one)."""
    model, out = exported
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # where the script finds _results.py
    monkeypatch.setenv("LORDKIT_RESULTS_DIR", str(tmp_path / "results"))
    latency = load_benchmark("latency")
    argv = ["--model", str(out), "--model-dir", str(model), "--batch-sizes", "1", "--iters", "1", "--warmup", "0",
            "--backends", "eager,ort-cpu", "--models", "generator", "--threads", "1", "--no-align",
            "--matmul-size", "256", "--ort-sweep", "generator:2", "--out", str(tmp_path), "--name", "run"]
    result = latency.main(argv, record=True)
    assert [r["status"] for r in result["rows"]] == ["ok", "ok"]
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["format"] == "lordkit-bench/2" and saved["ort_sweep"]["batch"] == 2
    assert saved["ort_sweep"]["rows"][0]["setting"] == "default (all, spinning)"
    latency.main(argv[:-1] + ["run2"], record=True)
    lines = (tmp_path / "results" / "latency.jsonl").read_text().splitlines()
    first, second = map(json.loads, lines)  # appended, one line per run
    assert first["script"] == "latency" and first["argv"] == argv and first["args"]["threads"] == 1
    assert first["machine"]["cpu"] and first["machine"]["logical_cpus"] >= 1 and first["date"].endswith("Z")
    rows = first["figures"]["rows"]
    assert [(r["backend"], r["status"]) for r in rows] == [("eager", "ok"), ("ort-cpu", "ok")]
    assert rows[1]["img_per_sec"] > 0 and rows[1]["speedup_vs_eager"] > 0
    assert first["figures"]["json"] == str(tmp_path / "run.json") and second["figures"]["json"].endswith("run2.json")
    with pytest.raises(LordkitError, match="unknown network 'decoder'"):
        latency.main(["--ort-sweep", "decoder:2"])



def test_result_lines_are_appended_as_plain_json(tmp_path, monkeypatch):
    """benchmarks/_results.py: one line per run, appended; numpy values as numbers, NaN as null."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setenv("LORDKIT_RESULTS_DIR", str(tmp_path / "r"))
    import _results

    figures = {"img_per_sec": np.float32(2.5), "ratio": float("nan"), "where": tmp_path, "batches": (1, np.int64(8))}
    first = _results.append_result("smoke", figures, args={"n": 1}, argv=["-n", "1"])
    again = _results.append_result("smoke", {"img_per_sec": 3.0})
    assert first == again == tmp_path / "r" / "smoke.jsonl"
    one, two = (json.loads(line) for line in first.read_text().splitlines())
    assert one["figures"] == {"img_per_sec": 2.5, "ratio": None, "where": str(tmp_path), "batches": [1, 8]}
    assert one["argv"] == ["-n", "1"] and one["args"] == {"n": 1} and one["script"] == "smoke"
    assert one["machine"]["physical_cores"] >= 1 and "cpu_flags" in one["machine"]
    assert two["figures"] == {"img_per_sec": 3.0}
