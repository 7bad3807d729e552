"""lordkit.runtime and `lordkit transfer`: torch-free transfer from real exports of tiny untrained models.

Exports are made once per session with tests/factories.py (the real exporter), so every check runs
against the files a user would get: a colour and a grey non-face model, and a colour face model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import one_line_error
from factories import make_export, make_model_dir

from lordkit import faces
from lordkit.errors import LordkitError

SIZE = 32
CELEBA_TEMPLATE = [[0.37, 0.46], [0.63, 0.46], [0.5, 0.6], [0.4, 0.74], [0.6, 0.74]]
REPO = Path(__file__).resolve().parents[1]


def astronaut_path() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "astronaut.png"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def dlib_models_or_skip() -> None:
    try:
        faces.find_model_file("shape68")
    except LordkitError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Exports of three tiny models (ONNX only: the runtime never reads the .pt files)."""
    root = tmp_path_factory.mktemp("runtime-exports")
    specs = {
        "colour": dict(channels=3, n_classes=3, class_names=["circle", "square", "star"]),
        "grey": dict(channels=1, n_classes=2),
        "face": dict(channels=3, n_classes=2, face_template=CELEBA_TEMPLATE),
    }
    out = {}
    for name, kw in specs.items():
        model = make_model_dir(root / "models" / name, img_size=SIZE, seed=len(out), **kw)
        # One parity batch size keeps this quick; the export tests cover the exporter's checks.
        out[name] = make_export(model, root / "exports" / name, torchscript=False, batch_sizes=(2,))
    return out


def write_rgb(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]) if img.ndim == 3 else img)
    return path


def random_photos(directory: Path, n: int, size: int = SIZE, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    return [write_rgb(directory / f"img{k}.png", rng.integers(0, 256, (size, size, 3), np.uint8)) for k in range(n)]


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def nchw(imgs: list[np.ndarray]) -> np.ndarray:
    return np.stack(imgs).astype(np.float32).transpose(0, 3, 1, 2) / 255.0


def warnings_in(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


TORCH_BLOCKED = "import sys; sys.modules['torch'] = None\n"


def run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter where `import torch` fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", TORCH_BLOCKED + code, *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# No torch.


def test_runtime_imports_and_runs_without_torch(exports):
    code = """
import numpy as np
import lordkit.runtime as rt
t = rt.Transfer(sys.argv[1], provider="cpu", batch_size=4)
rng = np.random.default_rng(0)
imgs = [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(3)]
out = t.transfer(imgs, [imgs[0], 1, "star"])
assert out.shape == (3, 3, 32, 32, 3) and out.dtype == np.float32, out.shape
assert all(not m.startswith("torch") or sys.modules[m] is None for m in sys.modules)
print("ok", t.device)
"""
    r = run_without_torch(code, str(exports["colour"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "cpu"]


def test_cli_transfer_n_by_m_without_torch(exports, tmp_path):
    """3 inputs x 3 classes (a photo, an id, a name) through the CLI: 9 PNGs equal to the ONNX models."""
    photos = random_photos(tmp_path / "in", 4)
    inputs, ref = photos[:3], photos[3]
    out = tmp_path / "out"
    code = "from lordkit.cli.app import main\nsys.argv[0] = 'lordkit'\nmain()\n"
    args = [str(p) for p in inputs] + ["--class", str(ref), "--class-id", "0", "--class-name", "square",
                                       "--model", str(exports["colour"]), "-o", str(out), "--batch-size", "4"]
    r = run_without_torch(code, "transfer", *args)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"img{i}__{c}.png" for i in range(3) for c in ("img3", "circle", "square"))

    # The same pairs straight through the exported transfer / generator models.
    exp = exports["colour"]
    contents = [read_rgb(p) for p in inputs]
    direct = ort_session(exp / "transfer.onnx").run(None, {
        "content_image": nchw(contents), "class_image": nchw([read_rgb(ref)] * 3)})[0]
    codes = ort_session(exp / "content_encoder.onnx").run(None, {"image": nchw(contents)})[0]
    bank = np.load(exp / "class_bank.npy")
    gen = ort_session(exp / "generator.onnx")
    for i in range(3):
        expected = {"img3": direct[i]}
        for label, cid in (("circle", 0), ("square", 1)):
            expected[label] = gen.run(None, {"content_code": codes[i:i + 1], "class_code": bank[cid:cid + 1]})[0][0]
        for label, want in expected.items():
            got = read_rgb(out / f"img{i}__{label}.png")
            assert got.shape == (SIZE, SIZE, 3)
            # PNGs are uint8: half a level of rounding plus the 1e-4 parity tolerance.
            err = np.abs(got.astype(np.float64) / 255.0 - want.transpose(1, 2, 0)).max()
            assert err <= 0.5 / 255 + 1e-4, (i, label, err)


# ---------------------------------------------------------------------------------------------
# The Python API: batching, codes computed once, IO binding.


class Counting:
    """Wraps an OrtModel and counts calls and images."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0

    def __call__(self, **inputs):
        self.calls += 1
        self.rows += len(next(iter(inputs.values())))
        return self.model(**inputs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_batched_transfer_encodes_each_image_once_and_matches_the_transfer_model(exports):
    from lordkit.runtime import Transfer

    t = Transfer(exports["colour"], provider="cpu", batch_size=5)
    for name in list(t.models):
        t.models[name] = Counting(t.models[name])
    rng = np.random.default_rng(1)
    contents = [rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8) for _ in range(4)]
    class_imgs = [rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8) for _ in range(2)]
    classes = [class_imgs[0], 2, "circle", class_imgs[1]]
    out = t.transfer(contents, classes)
    assert out.shape == (4, 4, SIZE, SIZE, 3) and out.dtype == np.float32
    assert t.models["content_encoder"].rows == 4 and t.models["content_encoder"].calls == 1
    assert t.models["class_encoder"].rows == 2  # ids and names read the class bank
    assert t.models["generator"].rows == 16 and t.models["generator"].calls == 4  # ceil(16 / 5)

    direct = ort_session(exports["colour"] / "transfer.opt.onnx")
    for j, k in ((0, 0), (3, 1)):
        want = direct.run(None, {"content_image": nchw(contents), "class_image": nchw([class_imgs[k]] * 4)})[0]
        assert np.abs(out[:, j] - want.transpose(0, 2, 3, 1)).max() < 1e-4
    # A class given by id and by name is the same row of the bank.
    assert np.array_equal(out[:, 1], t.transfer(contents, ["star"])[:, 0])


def test_io_binding_path_equals_plain_path(exports):
    from lordkit.runtime import Transfer

    rng = np.random.default_rng(2)
    contents = [rng.random((SIZE, SIZE, 3), dtype=np.float32) for _ in range(7)]
    classes = [rng.random((SIZE, SIZE, 3), dtype=np.float32), 0, 1]
    plain = Transfer(exports["colour"], provider="cpu", batch_size=4, io_binding=False)
    bound = Transfer(exports["colour"], provider="cpu", batch_size=4, io_binding=True)
    assert bound.io_binding and not plain.io_binding and bound.device.kind == "cpu"
    a, b = plain.transfer(contents, classes), bound.transfer(contents, classes)
    assert np.array_equal(a, b)
    # Device buffers are allocated once per shape and reused: 21 pairs in chunks of 4 -> shapes 4 and 1.
    gen = bound.models["generator"]
    assert sorted(gen._buffers["in:content_code"]) == [(1, 8), (4, 8)]
    before = {k: id(v) for k, v in gen._buffers["out:image"].items()}
    assert np.array_equal(bound.transfer(contents, classes), a)
    assert {k: id(v) for k, v in gen._buffers["out:image"].items()} == before
    # Results handed out are copies: a later call does not overwrite them.
    first = bound.transfer(contents[:1], [0])
    bound.transfer(contents[1:2], [1])
    assert np.array_equal(first, a[:1, 1:2])


def test_provider_choice(exports, monkeypatch):
    from lordkit.runtime import Transfer, select_device
    from lordkit.runtime import session as session_mod

    said = []
    assert select_device("auto", said.append).kind == "cpu" and not said
    assert select_device("cpu", said.append).kind == "cpu" and not said
    assert select_device("cuda", said.append).kind == "cpu"
    assert len(said) == 1 and "CUDA was asked for" in said[0] and "running on CPU" in said[0]
    with pytest.raises(LordkitError, match="unknown provider"):
        select_device("tpu")
    monkeypatch.setattr(session_mod.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    dev = select_device("auto")
    assert (dev.kind, dev.device_id) == ("cuda", 0) and select_device("cuda:1").device_id == 1
    assert dev.providers[0][0] == "CUDAExecutionProvider"
    monkeypatch.undo()
    t = Transfer(exports["colour"], provider="cuda", threads=1, warn=said.append)
    assert t.device.kind == "cpu" and len(said) == 2


# ---------------------------------------------------------------------------------------------
# Faces: alignment and paste-back on a real photo.


def test_weighted_similarity_transform():
    rng = np.random.default_rng(6)
    src = rng.uniform(0, 100, (5, 2))
    m = cv2.getRotationMatrix2D((10.0, 20.0), 17.0, 0.6)
    dst = faces.transform_points(src, m)
    assert np.allclose(faces.similarity_transform(src, dst, [4, 4, 1, 1, 1]), m)  # exact data: any weights
    noisy = dst + rng.normal(0, 3, dst.shape)
    plain = faces.transform_points(src, faces.similarity_transform(src, noisy))
    weighted = faces.transform_points(src, faces.similarity_transform(src, noisy, [50, 50, 1, 1, 1]))
    err = lambda fit: np.linalg.norm(fit[:2] - noisy[:2], axis=1).max()  # noqa: E731
    assert err(weighted) < err(plain)
    assert np.allclose(faces.similarity_transform(src, noisy, [1] * 5), faces.similarity_transform(src, noisy))
    with pytest.raises(ValueError):
        faces.similarity_transform(src, dst, [1, 1])


def test_alignment_puts_the_eyes_on_the_template():
    from lordkit.runtime import Preparer

    dlib_models_or_skip()
    crop_size = 128
    prep = Preparer(crop_size, 3, CELEBA_TEMPLATE)
    [face] = prep(astronaut_path())
    assert face.image.shape == (crop_size, crop_size, 3) and face.aligned
    # Landmarks found again on the crop: the eyes sit on the template.
    found = faces.FaceAligner().find(face.image, upsample=1)
    assert found, "no face found on the aligned crop"
    want = faces.template_to_pixels(CELEBA_TEMPLATE, crop_size)
    eye_err = np.linalg.norm(found[0][1][:2] - want[:2], axis=1)
    assert eye_err.max() < 2.0, eye_err
    assert np.linalg.norm(found[0][1] - want, axis=1).max() < 10.0  # nose and mouth: the face's own shape
    # dlib's 5-point model, given by path: the transform is fitted to the eye centres alone.
    [face5] = Preparer(crop_size, 3, CELEBA_TEMPLATE, landmarks=str(faces.find_model_file("shape5")))(astronaut_path())
    found = faces.FaceAligner().find(face5.image, upsample=1)
    assert found and np.linalg.norm(found[0][1][:2] - want[:2], axis=1).max() < 2.0


def test_paste_back_changes_the_face_and_nothing_far_from_it(exports):
    from lordkit.runtime import Transfer

    dlib_models_or_skip()
    t = Transfer(exports["face"], provider="cpu")
    [face] = t.prepare(astronaut_path())
    photo = face.photo.copy()
    out = t.transfer([face], [1])
    pasted = t.paste_back(face, out[0, 0])
    assert pasted.shape == photo.shape and pasted.dtype == np.uint8
    assert np.array_equal(face.photo, photo)  # the prepared photo is not modified
    # The crop's footprint in the photo, grown by the feather width and a margin.
    footprint = cv2.warpAffine(np.ones((SIZE, SIZE), np.uint8), faces.invert_transform(face.matrix),
                               photo.shape[1::-1], flags=cv2.INTER_NEAREST)
    footprint = cv2.dilate(footprint, np.ones((9, 9), np.uint8))
    far = footprint == 0
    assert far.mean() > 0.8
    assert np.array_equal(pasted[far], photo[far])  # bit for bit
    cy, cx = (int(round(v)) for v in faces.transform_points([[SIZE / 2, SIZE / 2]], faces.invert_transform(face.matrix))[0][::-1])
    assert np.abs(pasted[cy - 5:cy + 5, cx - 5:cx + 5].astype(int) - photo[cy - 5:cy + 5, cx - 5:cx + 5]).mean() > 10


def test_all_faces_and_a_big_photo(exports, tmp_path):
    from lordkit.runtime import Transfer

    dlib_models_or_skip()
    said = []
    t = Transfer(exports["face"], provider="cpu", warn=said.append)
    astro = read_rgb(astronaut_path())
    # Two astronauts side by side: two faces, largest first.
    smaller = np.pad(cv2.resize(astro, (400, 400)), ((56, 56), (0, 0), (0, 0)), constant_values=255)
    pair = np.concatenate([astro, smaller], axis=1)
    found = t.prepare(write_rgb(tmp_path / "pair.png", pair), all_faces=True)
    assert [f.label for f in found] == ["pair-face1", "pair-face2"]
    assert found[0].matrix[0, 0] < found[1].matrix[0, 0]  # the larger face shrinks more
    # 10000 x 10000: decoded at reduced size, searched on a smaller copy, aligned.
    big = tmp_path / "big.jpg"
    ok, buf = cv2.imencode(".jpg", cv2.resize(astro[..., ::-1], (10000, 10000)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    buf.tofile(str(big))
    [face] = t.prepare(big)
    assert max(face.photo.shape) <= 4096 and face.photo_scale == pytest.approx(0.4096, abs=1e-3)
    small = t.prepare(astronaut_path())[0]
    assert np.abs(face.image.astype(int) - small.image).mean() < 12  # the same crop, up to resampling
    assert not said


# ---------------------------------------------------------------------------------------------
# Image files.


def test_load_image_formats_alpha_and_channels(tmp_path):
    from lordkit.runtime.images import load_image, sniff

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 60, 3), np.uint8)
    for ext in ("png", "jpg", "bmp", "webp", "tif", "ppm"):
        path = write_rgb(tmp_path / f"c.{ext}", rgb)
        info = sniff(np.fromfile(path, np.uint8))
        assert info is not None and (info.width, info.height) == (60, 40), ext
        img = load_image(path, 3).pixels
        assert img.shape == (40, 60, 3)
        if ext != "jpg":  # OpenCV writes WebP lossless unless given a quality
            assert np.array_equal(img, rgb), ext
    said = []
    grey = write_rgb(tmp_path / "g.png", rgb[..., 0])
    assert load_image(grey, 3, warn=said.append).pixels.shape == (40, 60, 3) and "greyscale" in said[-1]
    assert load_image(tmp_path / "c.png", 1, warn=said.append).pixels.shape == (40, 60) and "colour" in said[-1]
    rgba = np.dstack([rgb[..., ::-1], np.full((40, 60), 255, np.uint8)])
    rgba[:20, :, 3] = 0
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    white = load_image(tmp_path / "a.png", 3, warn=said.append).pixels
    assert "composited onto white" in said[-1] and (white[:20] == 255).all() and np.array_equal(white[20:], rgb[20:])
    black = load_image(tmp_path / "a.png", 3, alpha_background="black").pixels
    assert (black[:20] == 0).all()
    opaque = tmp_path / "opaque.png"
    cv2.imwrite(str(opaque), np.dstack([rgb[..., ::-1], np.full((40, 60), 255, np.uint8)]))
    n = len(said)
    assert np.array_equal(load_image(opaque, 3, warn=said.append).pixels, rgb) and len(said) == n
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    assert np.array_equal(load_image(tmp_path / "deep.png", 3).pixels, rgb)


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header declaring width x height, with a token IDAT: never meant to be decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------
# `lordkit transfer`: outputs, and one line for every bad input.


def test_int8_precision_runs_the_int8_files(cli, exports, tmp_path):
    """An export quantized with `export --int8` runs its .int8.onnx files under --precision int8."""
    import shutil

    from lordkit.export.quantize import quantize_export
    from lordkit.runtime import Transfer

    export = tmp_path / "colour-int8"
    shutil.copytree(exports["colour"], export)
    rng = np.random.default_rng(3)
    quantize_export(export, rng.integers(0, 256, (24, SIZE, SIZE, 3), np.uint8), batch_size=4)
    fp32, int8 = Transfer(export, provider="cpu"), Transfer(export, provider="cpu", precision="int8")
    assert all(m.path.name.endswith(".int8.onnx") for m in int8.models.values())
    assert not any(m.path.name.endswith(".int8.onnx") for m in fp32.models.values())
    imgs = [rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8) for _ in range(3)]
    a, b = fp32.transfer(imgs, [0, 2]), int8.transfer(imgs, [0, 2])
    assert a.shape == b.shape
    assert 0 < np.abs(a - b).mean() < 0.05  # int8 arithmetic, the same picture
    photo = random_photos(tmp_path / "in", 1, size=48)[0]
    r = cli("transfer", photo, "--class-id", "1", "--model", export, "--precision", "int8", "-o", tmp_path / "o.png")
    assert r.exit_code == 0, r.output
    assert read_rgb(tmp_path / "o.png").shape == (SIZE, SIZE, 3)


def test_cli_single_output_grid_and_force(cli, exports, tmp_path):
    photos = random_photos(tmp_path / "in", 3, size=48)
    single = tmp_path / "one.png"
    r = cli("transfer", photos[0], "--class-id", "1", "--model", exports["colour"], "-o", single)
    assert r.exit_code == 0, r.output
    assert read_rgb(single).shape == (SIZE, SIZE, 3) and not warnings_in(r)
    msg = one_line_error(cli("transfer", photos[0], "--class-id", "1", "--model", exports["colour"], "-o", single))
    assert "already exists" in msg and "--force" in msg
    assert cli("transfer", photos[0], "--class-id", "2", "--model", exports["colour"], "-o", single, "--force").exit_code == 0

    grid = tmp_path / "grid.png"
    r = cli("transfer", *photos[:2], "--class", photos[2], "--class-name", "star", "--model", exports["colour"],
            "-o", grid, "--grid")
    assert r.exit_code == 0, r.output
    cell, pad, label_w, top = 64, 2, 96, 20  # lordkit.viz.image_grid's layout: 3 rows x 3 columns
    assert read_rgb(grid).shape == (top + 3 * (cell + pad) + pad, label_w + 3 * (cell + pad) + pad, 3)


def test_cli_model_by_name(cli, base, exports, tmp_path):
    shutil.copytree(exports["colour"], base / "exports" / "shapes")
    photo = random_photos(tmp_path, 1)[0]
    r = cli("transfer", photo, "--class-id", "0", "--model", "shapes", "-o", tmp_path / "o.png")
    assert r.exit_code == 0, r.output
    assert "export not found" in one_line_error(cli("transfer", photo, "--class-id", "0", "--model", "nope",
                                                    "-o", tmp_path / "p.png"))


def test_cli_face_paste_back_and_all_faces(cli, exports, tmp_path):
    dlib_models_or_skip()
    photo = astronaut_path()
    out = tmp_path / "pasted.png"
    r = cli("transfer", photo, "--class-id", "1", "--model", exports["face"], "-o", out, "--paste-back")
    assert r.exit_code == 0, r.output
    got, orig = read_rgb(out), read_rgb(photo)
    assert got.shape == orig.shape
    assert np.array_equal(got[-60:], orig[-60:]) and not np.array_equal(got, orig)
    # Crops, two classes: a directory with one PNG per pair.
    r = cli("transfer", photo, "--class", photo, "--class-id", "0", "--model", exports["face"], "-o", tmp_path / "d")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["astronaut__astronaut.png", "astronaut__class00.png"]
    r = cli("transfer", photo, "--class-id", "0", "--model", exports["face"], "-o", tmp_path / "f", "--all-faces",
            "--landmarks", faces.find_model_file("shape5"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["astronaut-face1__class00.png"]
    # Two photos, every face pasted back, two classes: one picture per photo and class.
    pair = write_rgb(tmp_path / "pair.png", np.concatenate([orig, orig[:, ::-1]], axis=1))
    r = cli("transfer", pair, photo, "--class-id", "0", "--class-id", "1", "--model", exports["face"],
            "-o", tmp_path / "p", "--all-faces", "--paste-back", "--batch-size", "3")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "astronaut__class00.png", "astronaut__class01.png", "pair__class00.png", "pair__class01.png"]
    both = read_rgb(tmp_path / "p" / "pair__class01.png")
    assert both.shape == (512, 1024, 3)
    assert not np.array_equal(both[:, :512], orig) and not np.array_equal(both[:, 512:], orig[:, ::-1])


def test_cli_conversions_warn_and_go_on(cli, exports, tmp_path):
    rng = np.random.default_rng(4)
    grey = write_rgb(tmp_path / "grey.png", rng.integers(0, 256, (SIZE, SIZE), np.uint8))
    colour = write_rgb(tmp_path / "colour.png", rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8))
    rgba = np.dstack([rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8), np.full((SIZE, SIZE), 100, np.uint8)])
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)

    r = cli("transfer", grey, "--class-id", "0", "--model", exports["colour"], "-o", tmp_path / "o1.png")
    assert r.exit_code == 0 and warnings_in(r) == [f"warning: {grey} is greyscale; converted to RGB for this colour model"]
    r = cli("transfer", colour, "--class-id", "0", "--model", exports["grey"], "-o", tmp_path / "o2.png")
    assert r.exit_code == 0 and "converted to greyscale" in warnings_in(r)[0]
    r = cli("transfer", tmp_path / "alpha.png", "--class-id", "0", "--model", exports["colour"], "-o", tmp_path / "o3.png")
    assert r.exit_code == 0 and warnings_in(r)[0].endswith("has transparent pixels; composited onto white")
    r = cli("transfer", colour, "--class-id", "0", "--model", exports["colour"], "-o", tmp_path / "o4.png",
            "--provider", "cuda")
    assert r.exit_code == 0 and len(warnings_in(r)) == 1 and "running on CPU" in warnings_in(r)[0]
    assert r.stderr.strip().splitlines() == warnings_in(r)  # nothing else on stderr: no progress residue, no logs


def broken_export(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    if how == "missing":
        (dst / "generator.opt.onnx").unlink()
    elif how == "tampered":
        data = bytearray((dst / "class_bank.npy").read_bytes())
        data[-1] ^= 0xFF
        (dst / "class_bank.npy").write_bytes(bytes(data))
    elif how == "foreign":
        import onnx

        from lordkit.export_format import sha256_file

        model = onnx.load(str(dst / "content_encoder.opt.onnx"))
        del model.metadata_props[:]
        model.producer_name = "pytorch"
        onnx.save(model, str(dst / "content_encoder.opt.onnx"))
        manifest["sha256"]["content_encoder.opt.onnx"] = sha256_file(dst / "content_encoder.opt.onnx")
    elif how == "format":
        manifest["format"] = "someone-else/3"
    elif how == "no-manifest":
        (dst / "manifest.json").unlink()
        return dst
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("how, expected", [
    ("missing", "is missing generator.opt.onnx (listed in manifest.json)"),
    ("tampered", "files disagree with the manifest: class_bank.npy"),
    ("foreign", "not a lordkit export: content_encoder.opt.onnx came from another tool"),
    ("format", "has format 'someone-else/3'; this runtime reads lordkit-export/1"),
    ("no-manifest", "is not a lordkit export: it has no manifest.json"),
])
def test_cli_refuses_a_broken_export(cli, exports, tmp_path, how, expected):
    photo = random_photos(tmp_path, 1)[0]
    bad = broken_export(exports["colour"], tmp_path / "export", how)
    msg = one_line_error(cli("transfer", photo, "--class-id", "0", "--model", bad, "-o", tmp_path / "o.png"))
    assert expected in msg, msg


def bad_input_files(tmp_path: Path) -> dict[str, Path]:
    """The files the bad-input table names, by placeholder."""
    notes = tmp_path / "notes.jpg"
    notes.write_text("this is not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return dict(tmp=tmp_path, good=random_photos(tmp_path, 1)[0], notes=notes, empty=empty,
                small=write_rgb(tmp_path / "small.png", np.zeros((20, 50, 3), np.uint8)),
                huge=huge_png(tmp_path / "huge.png", 12000, 12000))


BAD_INPUTS = [  # (arguments, expected error line); {name}s are files of bad_input_files or exports
    (["{tmp}/nope.png", "--class-id", "0", "--model", "{colour}"], "error: image not found: {tmp}/nope.png"),
    (["{tmp}", "--class-id", "0", "--model", "{colour}"], "error: {tmp} is a directory, not an image file"),
    (["{notes}", "--class-id", "0", "--model", "{colour}"], "error: {notes} is not an image file (no decoder accepts it)"),
    (["{empty}", "--class-id", "0", "--model", "{colour}"], "error: {empty} is empty, not an image"),
    (["{small}", "--class-id", "0", "--model", "{colour}"],
     "error: {small} is 50x20 px, smaller than this model's 32x32 input; use an image at least 32 px"),
    (["{huge}", "--class-id", "0", "--model", "{colour}"], "error: {huge} is 12000x12000 px (144 MP), above the 100 MP limit"),
    (["{good}", "--class", "{huge}", "--model", "{colour}"], "error: {huge} is 12000x12000 px"),  # class photos alike
    (["{good}", "--class-id", "3", "--model", "{colour}"], "class id 3 is out of range"),
    (["{good}", "--class-name", "sqare", "--model", "{colour}"], "unknown class name 'sqare'; did you mean square"),
    (["{good}", "--model", "{colour}"], "error: give at least one class"),
    (["{good}", "--class-id", "0", "--model", "{colour}", "--paste-back"], "error: --paste-back needs a face model"),
    (["{good}", "--class-id", "0", "--model", "{face}", "--paste-back", "--grid"],
     "error: --grid shows the model's crops; it cannot be combined with --paste-back"),
    (["{good}", "--class-id", "0", "--model", "{face}", "--paste-back", "--no-align"],
     "error: --paste-back needs faces found in the photos; it cannot be combined with --no-align"),
    (["{good}", "--class-id", "0", "--model", "{colour}", "--provider", "tpu"], "unknown provider 'tpu'"),
    (["{good}", "--class-id", "0", "--model", "{colour}", "--precision", "int4"], "unknown precision 'int4'"),
    (["{good}", "--class-id", "0", "--model", "{colour}", "--precision", "int8"], "has no int8 files; re-export with --int8"),
    (["{good}", "--class-id", "0", "--model", "{tmp}/no-export"], "export not found"),
    (["{good}", "{good}", "--class-id", "0", "--model", "{colour}"], "writes several images"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUTS, ids=[f"{i}-{e.split(':')[0]}" for i, (_, e) in enumerate(BAD_INPUTS)])
def test_cli_bad_inputs_are_one_line_errors(cli, exports, tmp_path, args, expected):
    fill = {**bad_input_files(tmp_path), **exports}
    msg = one_line_error(cli("transfer", *[a.format(**fill) for a in args], "-o", tmp_path / "out.png"))
    assert expected.format(**fill) in msg
    assert not (tmp_path / "out.png").exists()


def test_cli_face_model_without_a_face(cli, exports, tmp_path):
    dlib_models_or_skip()
    noise = write_rgb(tmp_path / "noise.png", np.random.default_rng(5).integers(0, 256, (200, 200, 3), np.uint8))
    r = cli("transfer", noise, "--class-id", "0", "--model", exports["face"], "-o", tmp_path / "out.png")
    assert one_line_error(r) == f"error: no face found in {noise}; pass --no-align for pre-aligned images"
    assert not (tmp_path / "out.png").exists()
    r = cli("transfer", noise, "--class-id", "0", "--model", exports["face"], "--no-align", "-o", tmp_path / "ok.png")
    assert r.exit_code == 0, r.output
    assert read_rgb(tmp_path / "ok.png").shape == (SIZE, SIZE, 3)
