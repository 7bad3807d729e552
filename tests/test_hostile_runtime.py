"""Hostile exports and inputs for `lordkit transfer`: each is one `error: ...` line and exit status 2.

One table: a case damages a fresh copy of a real export (or the photo, or the arguments) and names
words the error line must hold. Cases marked `sub` run the command in a fresh interpreter, because
what they check happens outside Python: OpenCV's own log lines go to file descriptor 2, and its
decoder pixel limit is read when cv2 is first imported. The memory-hungry case runs under a 1.5 GB
address-space limit, so a decoder that allocated the declared image would fail with something else.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import one_line_error
from factories import make_export, make_model_dir

from lordkit.export_format import sha256_file

SIZE = 32
REPO = Path(__file__).resolve().parents[1]
HDR_HEAD = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 10500 +X 10500\n"  # 110 MP declared in 60 bytes


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    model = make_model_dir(root / "model", img_size=SIZE, channels=3, n_classes=3)
    return make_export(model, root / "export", torchscript=False, batch_sizes=(2,))


# ---------------------------------------------------------------------------------------------
# Damage: each function gets (export copy, tmp dir, monkeypatch) and returns the arguments after
# `transfer` that show the damage (anything but a list: the default command on the damaged export).


def default_args(exp: Path, tmp: Path) -> list:
    return [tmp / "photo.png", "--class-id", "0", "--model", exp, "-o", tmp / "out.png"]


def edit_manifest(exp: Path, **fields) -> None:
    path = exp / "manifest.json"
    m = json.loads(path.read_text())
    for key, value in fields.items():
        m[key] = value
    path.write_text(json.dumps(m))


def manifest_field(**fields):
    return lambda exp, tmp, mp: edit_manifest(exp, **fields)


def edit_models(change):
    def damage(exp, tmp, mp):
        m = json.loads((exp / "manifest.json").read_text())
        change(m["models"])
        edit_manifest(exp, models=m["models"])
    return damage


def relist(exp: Path, name: str) -> None:
    """Record a replaced file's new sha256, as a hostile export's author would."""
    m = json.loads((exp / "manifest.json").read_text())
    m["sha256"][name] = sha256_file(exp / name)
    edit_manifest(exp, sha256=m["sha256"])


def foreign_graph(input_shape: list, output: str, output_dim: int):
    """A graph that is not the content encoder, stamped with the content encoder's lordkit metadata."""
    import onnx
    from onnx import TensorProto, helper

    def damage(exp, tmp, mp):
        name = "content_encoder.opt.onnx"
        props = {p.key: p.value for p in onnx.load(str(exp / name), load_external_data=False).metadata_props}
        src = "image" if len(input_shape) == 4 else "x"
        nodes = [helper.make_node("GlobalAveragePool", [src], ["pooled"]),
                 helper.make_node("Flatten", ["pooled"], [output])] if src == "image" else \
            [helper.make_node("Identity", [src], [output])]
        graph = helper.make_graph(nodes, "other", [helper.make_tensor_value_info(src, TensorProto.FLOAT, input_shape)],
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", output_dim])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        helper.set_model_props(model, props)
        onnx.save(model, str(exp / name))
        relist(exp, name)
    return damage


def external_data(location: str, listed: bool, link: bool = False):
    """The content encoder saved with its weights in another file, referenced as `location`."""
    import onnx

    def damage(exp, tmp, mp):
        name = "content_encoder.opt.onnx"
        model = onnx.load(str(exp / name))
        onnx.save_model(model, str(exp / name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
        if location != "weights.bin":
            model = onnx.load(str(exp / name), load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = location
            onnx.save(model, str(exp / name))
        relist(exp, name)
        if listed:
            relist(exp, "weights.bin")
        if link:
            (exp / "weights.bin").rename(tmp / "weights.bin")
            (exp / "weights.bin").symlink_to(tmp / "weights.bin")
    return damage


def symlink(name: str):
    def damage(exp, tmp, mp):
        (exp / name).rename(tmp / name)
        (exp / name).symlink_to(tmp / name)
    return damage


def directory_in_place(name: str):
    def damage(exp, tmp, mp):
        (exp / name).unlink()
        (exp / name).mkdir()
    return damage


def unreadable(name: str):
    """PermissionError when the file is opened (chmod 000 does not stop root, who may run the tests)."""
    def damage(exp, tmp, mp):
        target = os.path.normpath(exp / name)
        real_os_open, real_open = os.open, builtins.open

        def os_open(path, *args, **kw):
            if os.path.normpath(path) == target:
                raise PermissionError(13, "Permission denied", target)
            return real_os_open(path, *args, **kw)

        def py_open(path, *args, **kw):
            if isinstance(path, (str, os.PathLike)) and os.path.normpath(path) == target:
                raise PermissionError(13, "Permission denied", target)
            return real_open(path, *args, **kw)

        mp.setattr(os, "open", os_open)
        mp.setattr(builtins, "open", py_open)
    return damage


def photo_bytes(data: bytes, name: str = "photo.png"):
    def damage(exp, tmp, mp):
        (tmp / name).write_bytes(data)
        return [tmp / name, "--class-id", "0", "--model", exp, "-o", tmp / "out.png"]
    return damage


def truncated_png(keep: int = 400) -> bytes:
    """A PNG cut after `keep` bytes (negative: that many bytes short of its end)."""
    _, buf = cv2.imencode(".png", np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8))
    return buf.tobytes()[:keep]


def fifo(name: str):
    """A named pipe in place of a file: opening it for reading would wait for a writer forever."""
    def damage(exp, tmp, mp):
        (exp / name).unlink()
        os.mkfifo(exp / name)
    return damage


def class_bank(values: str):
    """A class bank of the right shape and type holding non-finite numbers, with its sha256 relisted."""
    def damage(exp, tmp, mp):
        bank = np.load(exp / "class_bank.npy")
        if values == "huge":  # finite in float64, infinite once read as float32
            bank = bank.astype(np.float64)
            bank[0, 0] = 1e300
        else:
            bank[1, 2] = float(values)
        np.save(exp / "class_bank.npy", bank)
        relist(exp, "class_bank.npy")
    return damage


def args(*extra, photo: str = "{photo}", out: str = "{tmp}/out.png"):
    """The default command with `extra` arguments, or another photo / output ({tmp}, {photo}, {exp})."""
    def damage(exp, tmp, mp):
        fill = {"tmp": tmp, "photo": tmp / "photo.png", "exp": exp}
        return [photo.format(**fill), "--class-id", "0", "--model", exp, "-o", out.format(**fill),
                *[a.format(**fill) for a in extra]]
    return damage


def read_only(exp, tmp, mp):
    (tmp / "ro").mkdir()
    real_access = os.access
    mp.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp / "ro" else real_access(p, mode, **kw))
    return [tmp / "photo.png", "--class-id", "0", "--model", exp, "-o", tmp / "ro" / "out.png"]


def linked_export_dir(exp, tmp, mp):
    """A link to the export dir itself is followed: the run gets as far as the class id."""
    (tmp / "link").symlink_to(exp, target_is_directory=True)
    return [tmp / "photo.png", "--class-id", "7", "--model", tmp / "link", "-o", tmp / "out.png"]


def out_under_a_file(exp, tmp, mp):
    (tmp / "file.txt").write_text("x")
    return [tmp / "photo.png", "--class-id", "0", "--model", exp, "-o", tmp / "file.txt" / "out.png"]


@dataclass
class Case:
    id: str
    damage: object
    expected: tuple[str, ...]
    sub: bool = False  # run in a fresh interpreter


C = Case
CASES = [
    # 1. The manifest's schema.
    C("img_size-text", manifest_field(img_size="abc"), ("img_size must be an integer from 8 to 4096", "'abc'")),
    C("img_size-zero", manifest_field(img_size=0), ("img_size must be an integer from 8 to 4096", "got 0")),
    C("img_size-bool", manifest_field(img_size=True), ("img_size must be an integer", "True")),
    C("img_size-huge", manifest_field(img_size=100_000), ("img_size must be an integer from 8 to 4096",)),
    C("channels-2", manifest_field(channels=2), ("channels must be 1 or 3, got 2",)),
    C("content_dim-float", manifest_field(content_dim=1.5), ("content_dim must be an integer",)),
    C("class_dim-negative", manifest_field(class_dim=-8), ("class_dim must be an integer",)),
    C("class_names-text", manifest_field(class_names="abc"), ("class_names must be a non-empty list of strings",)),
    C("class_names-numbers", manifest_field(class_names=[1, 2, 3]),
      ("class_names must be a non-empty list of strings",)),
    C("class_names-twice", manifest_field(class_names=["a", "b", "a"]), ("class_names must be distinct", "'a'")),
    C("class_names-vs-bank", manifest_field(class_names=["a", "b"]), ("class_bank.npy is float32 (3, 8)", "(2, 8)")),
    C("models-list", manifest_field(models=[]), ("models must map network names",)),
    C("models-unknown-network", edit_models(lambda m: m.update(discriminator={"files": {}})),
      ("unknown network 'discriminator'; use one of: content_encoder, class_encoder, generator, transfer",)),
    C("models-files-list", edit_models(lambda m: m["generator"].update(files=["generator.onnx"])),
      ("models['generator'] must be an object with a 'files' object",)),
    C("models-file-number", edit_models(lambda m: m["generator"]["files"].update(onnx=5)),
      ("models['generator'].files['onnx'] must be a file name inside the export dir",)),
    C("models-file-outside", edit_models(lambda m: m["generator"]["files"].update(onnx="../generator.onnx")),
      ("must be a file name inside the export dir", "'../generator.onnx'")),
    C("models-file-kind", edit_models(lambda m: m["generator"]["files"].update(onnx_tpu="generator.onnx")),
      ("unknown kind 'onnx_tpu'; use one of: onnx, onnx_opt",)),
    C("models-inputs", edit_models(lambda m: m["generator"].update(inputs=["x"])),
      ("models['generator'].inputs must be ['content_code', 'class_code']",)),
    C("sha256-list", manifest_field(sha256=[]), ("sha256 must map file names to hex digests",)),
    C("sha256-short", lambda exp, tmp, mp: edit_manifest(exp, sha256={
        **json.loads((exp / "manifest.json").read_text())["sha256"], "class_bank.npy": "abc"}),
      ("sha256['class_bank.npy'] must be 64 hex digits",)),
    C("sha256-outside", lambda exp, tmp, mp: edit_manifest(exp, sha256={
        **json.loads((exp / "manifest.json").read_text())["sha256"], "../secret": "0" * 64}),
      ("sha256 lists '../secret', which is not a file name inside the export dir",)),
    C("class_bank-number", manifest_field(class_bank=3), ("class_bank must be a file name inside the export dir",)),
    C("face_template-text", manifest_field(face_template="eyes"), ("face_template must be null or a list",)),
    C("face_template-pair", manifest_field(face_template=[[0.3, "x"], [0.6, 0.4]]), ("face_template must be null",)),
    C("opset-text", manifest_field(opset="17"), ("opset must be a positive integer or null",)),
    C("value_range", manifest_field(value_range=[0, 255]), ("value_range must be [0.0, 1.0]",)),
    C("manifest-not-json", lambda exp, tmp, mp: (exp / "manifest.json").write_text("{"), ("is not valid JSON",)),
    C("manifest-nested", lambda exp, tmp, mp: (exp / "manifest.json").write_text("[" * 200_000),
      ("is not valid JSON",)),
    C("manifest-list", lambda exp, tmp, mp: (exp / "manifest.json").write_text("[]"), ("has format 'list'",)),
    # 2. lordkit metadata on another graph.
    C("foreign-graph-names", foreign_graph(["batch", 5], "y", 5),
      ("not a lordkit export: content_encoder.opt.onnx has inputs ['x'] and outputs ['y']",
       "expected ['image'] and ['content_code']")),
    C("foreign-graph-dims", foreign_graph(["batch", 3, 16, 16], "content_code", 3),
      ("not a lordkit export: content_encoder.opt.onnx has image tensor(float) [batch, 3, 16, 16]",
       "expected tensor(float) [batch, 3, 32, 32]")),
    # 3. Unreadable files.
    C("manifest-is-dir", directory_in_place("manifest.json"),
      ("cannot read", "manifest.json: it is not a regular file")),
    C("manifest-permission", unreadable("manifest.json"), ("cannot read", "manifest.json: permission denied")),
    C("onnx-permission", unreadable("generator.opt.onnx"), ("cannot read", "generator.opt.onnx: permission denied")),
    C("onnx-is-dir", directory_in_place("generator.opt.onnx"),
      ("generator.opt.onnx (listed in manifest.json) is not a regular file",)),
    C("photo-permission", unreadable("../photo.png"), ("cannot read", "photo.png: permission denied")),
    C("manifest-fifo", fifo("manifest.json"), ("cannot read", "manifest.json: it is not a regular file"), sub=True),
    C("class-bank-fifo", fifo("class_bank.npy"), ("class_bank.npy (listed in manifest.json) is not a regular file",),
      sub=True),
    C("onnx-fifo", fifo("generator.opt.onnx"), ("generator.opt.onnx (listed in manifest.json) is not a regular file",),
      sub=True),
    # Numbers no model can use: refused when the export opens, without numpy's warning lines (sub: a
    # warning would be printed there, where pytest does not collect it).
    C("class-bank-nan", class_bank("nan"), ("class_bank.npy holds 1 NaN or infinite value(s) (class id 1)",), sub=True),
    C("class-bank-inf", class_bank("-inf"), ("class_bank.npy holds 1 NaN or infinite value(s)",), sub=True),
    C("class-bank-beyond-float32", class_bank("huge"), ("class_bank.npy holds 1 NaN or infinite value(s) (class id 0)",),
      sub=True),
    # 4. Links inside the export (the export dir itself may be a link).
    C("link-class-bank", symlink("class_bank.npy"), ("class_bank.npy is a symbolic link",)),
    C("link-onnx", symlink("generator.opt.onnx"), ("generator.opt.onnx is a symbolic link",)),
    C("link-manifest", symlink("manifest.json"), ("manifest.json is a symbolic link",)),
    C("linked-export-dir-is-fine", linked_export_dir, ("class id 7 is out of range",)),
    # 5. ONNX external data.
    C("external-unlisted", external_data("weights.bin", listed=False),
      ("content_encoder.opt.onnx reads external data from weights.bin, which manifest.json does not list",)),
    C("external-outside", external_data("../weights.bin", listed=True),
      ("content_encoder.opt.onnx reads external data from '../weights.bin', outside the export dir",)),
    C("external-absolute", external_data("/etc/passwd", listed=True), ("external data from '/etc/passwd', outside",)),
    C("external-link", external_data("weights.bin", listed=True, link=True), ("weights.bin is a symbolic link",)),
    # 6, 7. Images: pixel limits before decoding, OpenCV's own lines silenced.
    C("hdr-huge-header", photo_bytes(HDR_HEAD + b"\x02\x02\x29\x04" * 8, "big.hdr"),
      ("big.hdr is 10500x10500 px (110 MP), above the 100 MP limit",)),
    C("hdr-huge-opencv-limit", photo_bytes(b"#?RADIANCE\n#" + b"x" * 5000 + b"\n" + HDR_HEAD[11:] + b"\x02" * 32,
                                           "big.hdr"), ("big.hdr is above the 100 MP limit",), sub=True),
    C("png-truncated", photo_bytes(truncated_png(), "cut.png"), ("cannot decode", "cut.png: truncated or corrupt PNG"),
      sub=True),
    C("png-truncated-in-its-end", photo_bytes(truncated_png(-20), "cut.png"),  # libpng used to print its own line
      ("cannot decode", "cut.png: truncated or corrupt PNG"), sub=True),
    C("png-truncated-in-iend", photo_bytes(truncated_png(-5), "cut.png"),
      ("cannot decode", "cut.png: truncated or corrupt PNG"), sub=True),
    C("photo-fifo", lambda exp, tmp, mp: os.mkfifo(tmp / "pipe.png") or [tmp / "pipe.png", "--class-id", "0", "--model",
                                                                         exp, "-o", tmp / "out.png"],
      ("pipe.png is not a regular file",), sub=True),
    # 8. Paths and numbers on the command line.
    C("input-missing", args(photo="{tmp}/missing.png"), ("image not found:", "missing.png")),
    C("input-directory", args(photo="{tmp}"), ("is a directory, not an image file",)),
    C("input-not-regular", args(photo="/dev/null"), ("/dev/null is not a regular file",)),
    C("class-photo-missing", args("--class", "{tmp}/nope.png"), ("image not found:", "nope.png")),
    C("out-parent-is-file", out_under_a_file, ("cannot write", "file.txt is a file, not a directory")),
    C("out-read-only-dir", read_only, ("cannot write", "no permission to create files in", "ro")),
    C("class-id-text", args("--class-id", "x"), ("--class-id must be an integer, got 'x'",)),
    C("batch-size-zero", args("--batch-size", "0"), ("--batch-size must be >= 1, got 0",)),
    C("threads-text", args("--threads", "many"), ("--threads must be an integer, got 'many'",)),
    # 9. Unknown names, with the valid ones listed.
    C("provider-tpu", args("--provider", "tpu"), ("unknown provider 'tpu'; use one of: auto, cpu, cuda, cuda:N",)),
    C("provider-cuda-x", args("--provider", "cuda:x"),
      ("unknown provider 'cuda:x'; use one of: auto, cpu, cuda, cuda:N",)),
    C("landmarks", args("--landmarks", "7"), ("unknown landmarks '7'; use one of: 68, 5, or the path",)),
    C("detector", args("--detector", "yolo"), ("unknown detector 'yolo'; use one of: hog, cnn",)),
    C("alpha-background", args("--alpha-background", "red"),
      ("unknown alpha background 'red'; use one of: white, black",)),
]


@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


SUBPROCESS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from lordkit.cli.app import app
app(sys.argv[1:], prog_name="lordkit")
"""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_one_error_line(case, export, tmp_path, cli, base, monkeypatch):
    exp = Path(shutil.copytree(export, tmp_path / "export"))
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
    assert cv2.imwrite(str(tmp_path / "photo.png"), photo)
    argv = case.damage(exp, tmp_path, monkeypatch)
    argv = argv if isinstance(argv, list) else default_args(exp, tmp_path)
    argv = ["transfer", *map(str, argv)]
    if case.sub:
        monkeypatch.undo()
        # The limit must come from lordkit itself, not from this process (which imported the runtime).
        env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
        env["PYTHONPATH"] = str(REPO)
        p = subprocess.run([sys.executable, "-c", SUBPROCESS, "--base-dir", str(base), *argv], capture_output=True,
                           text=True, timeout=120, check=False, cwd=REPO, env=env)
        result = Ran(p.returncode, p.stdout, p.stderr)
    else:
        result = cli(*argv)
        monkeypatch.undo()
    line = one_line_error(result)
    assert result.exit_code == 2, result.output
    for words in case.expected:
        assert words in line, line
    assert not (tmp_path / "out.png").exists()
