"""Export round trip on a tiny random model: files, checker, onnxruntime and TorchScript parity, metadata, CLI."""

import functools
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import one_line_error
from factories import make_export, make_model_dir
from safetensors.numpy import load_file

from lordkit.errors import LordkitError
from lordkit.export_format import NETWORKS
from lordkit.export import exporter
from lordkit.models import eager_networks
from lordkit.modeldir import load_amortized

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

NETS = NETWORKS
TEMPLATE = [[0.37, 0.45], [0.63, 0.45], [0.5, 0.6], [0.4, 0.75], [0.6, 0.75]]
KINDS = {"onnx": 1e-4, "onnx_opt": 1e-4, "onnx_fp16": 1e-2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A face model (RGB, template) exported in every format, fp16 included."""
    root = tmp_path_factory.mktemp("export")
    model = make_model_dir(root / "faces", face_template=TEMPLATE, class_names=["ann", "bob", "cid"])
    out = make_export(model, root / "out", fp16=True)
    return model, out, json.loads((out / "manifest.json").read_text())


@functools.lru_cache(maxsize=None)
def eager(model_dir, name):
    return eager_networks(load_amortized(model_dir))[name].eval()


def inputs(manifest, name, batch, seed=1):
    rng = np.random.default_rng(seed)
    c, s = manifest["channels"], manifest["img_size"]
    shapes = {"image": (batch, c, s, s), "content_image": (batch, c, s, s), "class_image": (batch, c, s, s),
              "content_code": (batch, manifest["content_dim"]), "class_code": (batch, manifest["class_dim"])}
    names = manifest["models"][name]["inputs"]
    return {n: (rng.random(shapes[n]) if "image" in n else rng.standard_normal(shapes[n])).astype(np.float32)
            for n in names}


def reference(model_dir, name, feed):
    with torch.inference_mode():
        return eager(model_dir, name)(*(torch.from_numpy(x) for x in feed.values())).numpy()


def test_manifest_files_and_hashes(exported):
    _, out, man = exported
    assert man["format"] == "lordkit-export/1" and man["model_name"] == "faces"
    assert (man["img_size"], man["channels"], man["content_dim"], man["class_dim"]) == (32, 3, 8, 8)
    assert man["class_names"] == ["ann", "bob", "cid"] and man["opset"] == 18
    assert man["onnx_exporter"] == "torch.export" and man["torch_version"] == torch.__version__
    assert man["onnxscript_version"]
    assert man["face_template"] == TEMPLATE and man["face_points"] == "eyes_nose_mouth"
    assert set(man["models"]) == set(NETS)
    listed = {f for m in man["models"].values() for f in m["files"].values()} | {man["class_bank"]}
    on_disk = {p.name for p in out.iterdir()}
    assert on_disk == listed | {"manifest.json"} == set(man["sha256"]) | {"manifest.json"}
    for name, digest in man["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    for m in man["models"].values():
        assert set(m["files"]) == {"onnx", "onnx_opt", "onnx_fp16", "torchscript"}
    # One parity row per file and batch size, all within tolerance.
    rows = {(r["file"], r["batch"]) for r in man["parity"]}
    assert rows == {(f, b) for f in listed - {"class_bank.npy"} for b in (1, 3, 8)}
    assert all(r["max_abs_err"] < r["tolerance"] for r in man["parity"])


def test_class_bank_is_the_latent_table(exported):
    model, out, man = exported
    bank = np.load(out / man["class_bank"])
    assert bank.dtype == np.float32 and bank.shape == (3, 8)
    np.testing.assert_array_equal(bank, load_file(model / "latent.safetensors")["class_embedding.weight"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NETS)
def test_onnx_checks_runs_and_matches(exported, name, kind):
    model, out, man = exported
    path = out / man["models"][name]["files"][kind]
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["lordkit.format"] == "lordkit-export/1" and props["lordkit.model"] == name
    assert props["lordkit.version"] == man["lordkit_version"]
    embedded = json.loads(props["lordkit.manifest"])
    assert embedded == {k: v for k, v in man.items() if k not in ("parity", "sha256")}
    assert [i.name for i in proto.graph.input] == man["models"][name]["inputs"]
    assert [o.name for o in proto.graph.output] == man["models"][name]["outputs"]
    for t in list(proto.graph.input) + list(proto.graph.output):
        assert t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 at the edges, fp16 too
        assert t.type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    halves = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert bool(halves) == (kind == "onnx_fp16")
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [man["opset"]]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)  # one file
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)  # types agree everywhere, fp16 too
    # Node metadata is the module path only: no stack traces naming the exporting machine's files.
    assert {p.key for n in proto.graph.node for p in n.metadata_props} <= {exporter.NAME_SCOPES}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8):
        feed = inputs(man, name, batch)
        got = sess.run(None, feed)[0]
        want = reference(model, name, feed)
        assert got.shape == want.shape and np.isfinite(got).all()
        assert np.abs(got - want).max() < KINDS[kind], (name, kind, batch)


def float32_reduce_means(path):
    """Whether each ReduceMean (AdaIN's statistics) of an ONNX file reads a float32 tensor."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.value_info, *proto.graph.input]}
    return [types.get(n.input[0]) == onnx.TensorProto.FLOAT for n in proto.graph.node if n.op_type == "ReduceMean"]


@pytest.mark.parametrize("name", ["generator", "transfer"])
def test_fp16_keeps_adain_in_float32(exported, name):
    # AdaIN's nodes are found by the module path in their metadata (torch.export-based exporter).
    _, out, man = exported
    plain = onnx.load(str(out / man["models"][name]["files"]["onnx"]))
    adain = [n for n in plain.graph.node if exporter._is_adain(n)]
    assert {"ReduceMean", "Sub", "Sqrt"} <= {n.op_type for n in adain}
    assert not {"Conv", "Resize", "LeakyRelu", "Gemm"} & {n.op_type for n in adain}
    checks = float32_reduce_means(out / man["models"][name]["files"]["onnx_fp16"])
    assert len(checks) == 2 * 2 and all(checks)  # mean and variance of each of the tiny model's 2 AdaIN layers


def test_manifest_exporter_fields(exported):
    from lordkit import export_format as fmt

    _, _, man = exported
    assert fmt.manifest_problem(man) is None and fmt.onnx_exporter(man) == "torch.export"
    older = {k: v for k, v in man.items() if k not in ("onnx_exporter", "torch_version", "onnxscript_version")}
    assert fmt.manifest_problem(older) is None and fmt.onnx_exporter(older) == "legacy"  # written before the field
    assert "onnx_exporter must be one of torch.export, legacy" in fmt.manifest_problem({**man, "onnx_exporter": "x"})
    assert "torch_version must be text" in fmt.manifest_problem({**man, "torch_version": 2})
    no_onnx = {**man, "models": {n: {**m, "files": {"torchscript": m["files"]["torchscript"]}}
                                 for n, m in man["models"].items()}}
    assert fmt.onnx_exporter({**no_onnx, "onnx_exporter": None}) is None


@pytest.mark.parametrize("name", NETS)
def test_torchscript_loads_and_matches(exported, name):
    model, out, man = exported
    extra = {"lordkit.json": ""}
    ts = torch.jit.load(str(out / man["models"][name]["files"]["torchscript"]), _extra_files=extra)
    meta = json.loads(extra["lordkit.json"])
    assert meta["lordkit.format"] == "lordkit-export/1" and meta["lordkit.model"] == name
    assert json.loads(meta["lordkit.manifest"])["model_name"] == "faces"
    for batch in (1, 3, 8):
        feed = inputs(man, name, batch, seed=batch)
        with torch.inference_mode():
            got = ts(*(torch.from_numpy(x) for x in feed.values())).numpy()
        assert np.abs(got - reference(model, name, feed)).max() < 1e-4


def test_grey_model_without_template(tmp_path):
    model = make_model_dir(tmp_path / "grey", channels=1, n_classes=2, seed=3)
    man = exporter.export_model(model, tmp_path / "out", torchscript=False, show=False)
    assert man["channels"] == 1 and man["face_template"] is None and man["face_points"] is None
    assert "onnx_fp16" not in man["models"]["transfer"]["files"]
    sess = ort.InferenceSession(str(tmp_path / "out" / "transfer.onnx"), providers=["CPUExecutionProvider"])
    feed = inputs(man, "transfer", 3)
    assert sess.run(None, feed)[0].shape == (3, 1, 32, 32)


def test_output_margin_is_exported_with_its_clamp(tmp_path):
    # A wide margin stretches the random model's outputs past 0 and 1: the clamp must be in every format.
    model = make_model_dir(tmp_path / "m", n_classes=2, output_margin=0.45)
    man = exporter.export_model(model, tmp_path / "out", show=False)
    feed = inputs(man, "transfer", 4)
    want = reference(model, "transfer", feed)
    assert want.min() == 0.0 and want.max() == 1.0 and 0 < ((want > 0) & (want < 1)).mean() < 1
    sess = ort.InferenceSession(str(tmp_path / "out" / "transfer.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, feed)[0] - want).max() < 1e-4
    ts = torch.jit.load(str(tmp_path / "out" / man["models"]["transfer"]["files"]["torchscript"]))
    with torch.inference_mode():
        assert np.abs(ts(*(torch.from_numpy(x) for x in feed.values())).numpy() - want).max() < 1e-4


def test_parity_failure_names_model_and_leaves_nothing(tmp_path, monkeypatch):
    model = make_model_dir(tmp_path / "m")
    real = exporter._export_onnx

    def perturbed(module, net, cfg, path, opset, onnx_exporter):
        real(module, net, cfg, path, opset, onnx_exporter)
        if net.name == "content_encoder":  # shift one weight: the graph stays valid, the numbers do not
            proto = onnx.load(str(path))
            w = next(t for t in proto.graph.initializer if len(t.dims) > 1)
            arr = onnx.numpy_helper.to_array(w) + 0.5
            w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
            onnx.save(proto, str(path))

    monkeypatch.setattr(exporter, "_export_onnx", perturbed)
    with pytest.raises(LordkitError, match=r"parity check failed for content_encoder: content_encoder\.onnx .*batch 1"):
        make_export(model, tmp_path / "out", torchscript=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging dir left either


def test_needs_encoders(tmp_path):
    model = make_model_dir(tmp_path / "m")
    (model / "amortized.safetensors").unlink()
    with pytest.raises(LordkitError, match="train-encoders"):
        make_export(model, tmp_path / "out")


def test_cli_export(cli, base):
    make_model_dir(base / "models" / "tiny")
    r = cli("export", "--model-name", "tiny")
    assert r.exit_code == 0, r.output
    out = base / "exports" / "tiny"
    assert str(out) in r.stdout and "transfer.opt.onnx" in r.stdout and "torchscript" in r.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["sha256"]) == {p.name for p in out.iterdir()} - {"manifest.json"}

    # Existing output: refused without --force, replaced with it.
    assert "already exists" in one_line_error(cli("export", "--model-name", "tiny"))
    alt = base / "alt"
    r = cli("export", "--model-name", "tiny", "--no-onnx", "--out", alt)
    assert r.exit_code == 0, r.output
    assert not list(alt.glob("*.onnx")) and (alt / "generator.pt").is_file()
    man = json.loads((alt / "manifest.json").read_text())
    assert man["opset"] is None and {r["backend"] for r in man["parity"]} == {"torchscript-cpu"}
    # The TorchScript-based exporter on request, at an opset only it writes; its fp16 files keep AdaIN in
    # float32 too (found by node name there).
    r = cli("export", "--model-name", "tiny", "--no-torchscript", "--onnx-exporter", "legacy", "--opset", "17",
            "--fp16", "--out", alt, "--force")
    assert r.exit_code == 0, r.output
    man = json.loads((alt / "manifest.json").read_text())
    assert man["opset"] == 17 and not list(alt.glob("*.pt"))
    assert (man["onnx_exporter"], man["onnxscript_version"]) == ("legacy", None)
    assert {p.key: p.value for p in onnx.load(str(alt / "generator.onnx")).metadata_props}["lordkit.model"] == "generator"
    assert [o.version for o in onnx.load(str(alt / "generator.onnx")).opset_import] == [17]
    checks = float32_reduce_means(alt / "generator.fp16.onnx")
    assert len(checks) == 4 and all(checks)


BAD_INPUTS = [  # (arguments, expected error line); {base} and {tmp} are filled in
    (["--model-name", "nope"], "error: model not found"),
    (["--model-name", "../x"], "error: invalid model name '../x'"),
    (["--model-name", "tiny", "--opset", "9"], "error: --opset must be an integer from 18 to 20, got 9"),
    (["--model-name", "tiny", "--opset", "17"],
     "error: --opset must be an integer from 18 to 20, got 17 (13 to 20 with --onnx-exporter legacy)"),
    (["--model-name", "tiny", "--onnx-exporter", "legacy", "--opset", "12"],
     "error: --opset must be an integer from 13 to 20, got 12"),
    (["--model-name", "tiny", "--onnx-exporter", "dynamo"],
     "error: unknown --onnx-exporter 'dynamo'; use one of: torch.export, legacy"),
    (["--model-name", "tiny", "--no-onnx", "--no-torchscript"], "nothing to export"),
    (["--model-name", "tiny", "--no-onnx", "--fp16"], "error: --fp16 makes half-precision ONNX files; it needs --onnx"),
    (["--model-name", "tiny", "--int8", "--no-onnx"], "error: --int8 quantizes the ONNX files; it needs --onnx"),
    (["--model-name", "tiny", "--int8"],
     "error: --int8 calibration data: dataset not found: {base}/data/tiny (run `lordkit preprocess` first); "
     "pass --calibration-data NAME"),
    (["--model-name", "tiny", "--int8", "--calibration-data", "nope"],
     "error: --int8 calibration data: dataset not found: {base}/data/nope"),
    (["--model-name", "stage1only"], "run `lordkit train-encoders` first"),
    (["--model-name", "tiny", "--out", "{tmp}/taken"], "error: export {tmp}/taken already exists; pass --force to replace it"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[f"{i}-{m.split(';')[0][7:40]}" for i, (_, m) in enumerate(BAD_INPUTS)])
def test_cli_bad_inputs(cli, base, tmp_path, args, message):
    make_model_dir(base / "models" / "tiny")
    (make_model_dir(base / "models" / "stage1only") / "amortized.safetensors").unlink()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "manifest.json").write_text("{}")
    fill = dict(base=base, tmp=tmp_path)
    assert message.format(**fill) in one_line_error(cli("export", *[a.format(**fill) for a in args]))
    assert not (base / "exports").exists()
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["manifest.json"]


def test_cli_export_int8_calibrates_on_a_dataset(cli, base):
    from lordkit.data.preprocess import preprocess
    from lordkit.data.sources import Options

    preprocess("synthetic", None, base / "data" / "cal", img_size=32,
               opts=Options({"n_x": "2", "n_y": "2", "n_scale": "1", "n_rotation": "2", "n_hue": "2", "n_shapes": "3"}),
               show_progress=False)
    make_model_dir(base / "models" / "q")
    r = cli("export", "-mn", "q", "--int8", "--calibration-data", "cal", "--force")
    assert r.exit_code == 0, r.output
    manifest = json.loads((base / "exports" / "q" / "manifest.json").read_text())
    int8 = [f for f in manifest["sha256"] if f.endswith(".int8.onnx")]
    assert len(int8) == 4 and all((base / "exports" / "q" / f).exists() for f in int8)


def test_encoder_input_mean_is_exported(tmp_path):
    # The mean the encoders subtract (model.encoder_input_mean) is part of every format's graph.
    plain = make_model_dir(tmp_path / "plain", n_classes=2)
    model = make_model_dir(tmp_path / "m", n_classes=2, encoder_input_mean=(0.9, 0.1, 0.5))
    man = exporter.export_model(model, tmp_path / "out", show=False)
    feed = inputs(man, "transfer", 4)
    want = reference(model, "transfer", feed)
    assert np.abs(want - reference(plain, "transfer", feed)).max() > 1e-3  # same seed: only the mean differs
    sess = ort.InferenceSession(str(tmp_path / "out" / "transfer.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, feed)[0] - want).max() < 1e-4
    ts = torch.jit.load(str(tmp_path / "out" / man["models"]["transfer"]["files"]["torchscript"]))
    with torch.inference_mode():
        assert np.abs(ts(*(torch.from_numpy(x) for x in feed.values())).numpy() - want).max() < 1e-4
