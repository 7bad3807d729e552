"""`lordkit export --web`: the page in a real browser (the system's headless Chromium over CDP)
against the Python runtime on the same files and images; the manifest's web section; the CLI.

Browser tests skip, with the reason, when Chromium, websocket-client or the onnxruntime-web files
are missing (CI: apt-get install chromium, then `python -m lordkit.export.web` once, online).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import one_line_error
from factories import make_export, make_model_dir

SIZE = 32


@pytest.fixture(scope="module")
def runtime():
    """The onnxruntime-web files, from the cache (npm's own cache only: tests stay offline)."""
    from lordkit.errors import LordkitError
    from lordkit.export.web import runtime_dir

    try:
        return runtime_dir()
    except LordkitError as e:
        pytest.skip(f"onnxruntime-web files not available: {e}")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("web")


def _web_export(root: Path, runtime: Path, name: str, channels: int) -> Path:
    from lordkit.export.web import add_web

    model = make_model_dir(root / f"model-{name}", img_size=SIZE, channels=channels, n_classes=4)
    out = make_export(model, root / name, torchscript=False, batch_sizes=(2,))
    add_web(out, runtime=runtime)
    return out


@pytest.fixture(scope="module")
def export(root, runtime):
    """A tiny RGB export with web/, under the served root."""
    return _web_export(root, runtime, "exp", 3)


@pytest.fixture(scope="module")
def grey_export(root, runtime):
    return _web_export(root, runtime, "grey", 1)


@pytest.fixture(scope="module")
def browser():
    from lordkit.export.web import Chromium, find_chromium

    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[dev]')")
    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (apt-get install -y chromium, or set LORDKIT_CHROMIUM)")
    with Chromium() as b:
        yield b


@pytest.fixture(scope="module")
def server(root):
    from lordkit.export.web import serve

    srv, url = serve(root)
    yield url
    srv.shutdown()
    srv.server_close()


def _images(d: Path) -> dict[str, Path]:
    """Photos of several sizes: exact, non-square (odd crop), 2x (OpenCV's fast area path), 3x, 1.25x."""
    rng = np.random.default_rng(1)
    sizes = {"exact": (SIZE, SIZE), "wide": (SIZE, SIZE + 7), "double": (2 * SIZE, 2 * SIZE),
             "triple": (3 * SIZE + 4, 3 * SIZE), "odd": (40, 45)}
    out = {}
    for name, (h, w) in sizes.items():
        base = cv2.resize(rng.integers(0, 256, (8, 8, 3), np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(base.astype(int) + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
        out[name] = d / f"{name}.png"
        cv2.imwrite(str(out[name]), img)
    return out


def _open(browser, url: str) -> str:
    browser.goto(url)
    return browser.wait_for("document.body && ['ready', 'error'].includes(document.body.dataset.state) "
                            "&& document.body.dataset.state")


def _run(browser, contents, class_photos=(), class_ids=(0,)) -> str:
    browser.set_files("#contents", contents)
    if class_photos:
        browser.set_files("#class-photos", class_photos)
    browser.eval(f"[...document.getElementById('class-bank').options].forEach(o => "
                 f"o.selected = {json.dumps(list(class_ids))}.includes(Number(o.value)))")
    browser.eval("document.body.dataset.state = 'running'; document.getElementById('run').click()")
    return browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")


def _error(browser) -> str:
    text = browser.eval("document.getElementById('error').hidden ? '' : document.getElementById('error').textContent")
    return text


@pytest.mark.parametrize("kind", ["exp", "grey"])
def test_page_matches_python_runtime(browser, server, kind, request, tmp_path):
    """Same crops as the runtime's Preparer (pixel for pixel), same transfer (fp32, max abs error < 1e-4)."""
    from lordkit.runtime import Transfer

    export = request.getfixturevalue("export" if kind == "exp" else "grey_export")
    imgs = _images(tmp_path)
    contents = [imgs["exact"], imgs["wide"], imgs["double"], imgs["triple"]]
    photo = imgs["odd"]
    assert _open(browser, server + f"{kind}/web/") == "ready", _error(browser)
    assert _run(browser, contents, [photo], class_ids=(0, 2)) == "done", _error(browser)
    got = browser.eval("({data: Array.from(window.lordkitResult.data), shape: window.lordkitResult.shape, "
                       "crops: window.lordkitResult.contentCrops.map(c => Array.from(c))})")
    n, m, c, s, _ = got["shape"]
    assert (n, m, c, s) == (4, 3, 3 if kind == "exp" else 1, SIZE)
    page = np.asarray(got["data"], np.float32).reshape(n, m, c, s, s).transpose(0, 1, 3, 4, 2)

    t = Transfer(export, provider="cpu", warn=lambda line: None)
    prepared = [t.prepare(p)[0] for p in contents]
    crops = np.asarray(got["crops"], np.uint8).reshape(n, s, s, c)
    for p, crop in zip(prepared, crops):
        np.testing.assert_array_equal(crop, p.image)
    want = t.transfer(prepared, [t.prepare(photo)[0], 0, 2])  # class sources: photos first, then ids
    assert np.abs(page - want).max() < 1e-4


def test_bad_image_is_one_message(browser, server, export, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((SIZE - 4, SIZE + 10, 3), np.uint8))
    assert _open(browser, server + "exp/web/") == "ready"
    assert _run(browser, [bad]) == "error"
    assert _error(browser) == "notes.png is not an image file (the browser cannot decode it)"
    assert _run(browser, [small]) == "error"
    assert _error(browser) == (f"small.png is {SIZE + 10}x{SIZE - 4} px, smaller than this model's {SIZE}x{SIZE} "
                               f"input; use an image at least {SIZE} px on its shorter side")


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "files disagree with the manifest: generator.opt.onnx has sha256"),
    ("missing", "the export is missing class_bank.npy"),
    ("format", "has format \"other/1\"; this page reads lordkit-export/1"),
    ("json", "is not valid JSON"),
])
def test_broken_export_is_one_message(browser, server, export, damage, message):
    """A damaged export (a file that disagrees with its hash, a missing file, a wrong or unreadable
    manifest) is one message on the page."""
    broken = export.parent / f"broken-{damage}"
    if broken.exists():
        shutil.rmtree(broken)
    shutil.copytree(export, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    if damage == "corrupt":
        data = bytearray((broken / "generator.opt.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (broken / "generator.opt.onnx").write_bytes(bytes(data))
    elif damage == "missing":
        (broken / "class_bank.npy").unlink()
    elif damage == "format":
        manifest["format"] = "other/1"
        (broken / "manifest.json").write_text(json.dumps(manifest))
    else:
        (broken / "manifest.json").write_text("{not json")
    assert _open(browser, server + f"{broken.name}/web/") == "error"
    text = _error(browser)
    assert message in text and "\n" not in text
    assert browser.eval("document.querySelectorAll('#error:not([hidden])').length") == 1


def test_web_keeps_the_runtime_check(export):
    """web/ files are in the manifest's web section (path -> sha256); the runtime opens the export as before."""
    from lordkit import export_format as fmt
    from lordkit.export.web import PAGE_FILES, RUNTIME_FILES, pinned_version
    from lordkit.runtime import Transfer
    from lordkit.runtime.bundle import Bundle

    m = json.loads((export / "manifest.json").read_text())
    assert m["web"]["onnxruntime_web"] == pinned_version()
    assert sorted(m["web"]["files"]) == sorted(f"web/{n}" for n in (*PAGE_FILES, *RUNTIME_FILES))
    for rel, digest in m["web"]["files"].items():
        assert fmt.sha256_file(export / rel) == digest
    assert not any("/" in name for name in m["sha256"])
    Bundle(export, verify="all")
    Transfer(export, provider="cpu")


def test_cli_web_on_existing_export(cli, tmp_path, runtime):
    model = make_model_dir(tmp_path / "m", img_size=32, channels=1, n_classes=2)
    out = make_export(model, tmp_path / "exp", torchscript=False, batch_sizes=(2,))
    r = cli("export", "--model-name", "m", "--out", out, "--web", "--web-runtime", runtime)
    assert r.exit_code == 0, r.output
    assert (out / "web" / "index.html").is_file() and "web" in json.loads((out / "manifest.json").read_text())
    err = one_line_error(cli("export", "--model-name", "m", "--out", out, "--web", "--web-runtime", runtime))
    assert "already has web/" in err
    err = one_line_error(cli("export", "--model-name", "m", "--out", tmp_path / "x", "--web",
                             "--web-runtime", tmp_path))
    assert "does not hold the onnxruntime-web files" in err
    err = one_line_error(cli("export", "--model-name", "m", "--out", out, "--web-runtime", runtime))
    assert "--web-runtime" in err and "--web" in err
    err = one_line_error(cli("export", "--model-name", "m", "--out", tmp_path / "y", "--web", "--no-onnx"))
    assert "needs --onnx" in err


def test_page_int8_matches_python_int8(browser, server, root, runtime):
    """The precision selector runs the export's *.int8.onnx files; onnxruntime-web's int8 kernels agree
    with onnxruntime's within a few quantization steps (measured: max 1.6e-3, mean 2e-5 on this model)."""
    from lordkit.export.quantize import quantize_export, smooth_noise_images
    from lordkit.export.web import add_web
    from lordkit.runtime import Transfer

    model = make_model_dir(root / "model-int8", img_size=SIZE, channels=3, n_classes=4)
    out = make_export(model, root / "int8", torchscript=False, batch_sizes=(2,))
    quantize_export(out, smooth_noise_images(32, SIZE, 3), n_calibration=16, n_holdout=4)
    add_web(out, runtime=runtime)
    crops = smooth_noise_images(3, SIZE, 3, seed=9)
    assert _open(browser, server + "int8/web/") == "ready"
    browser.eval("const p = document.getElementById('precision'); p.value = 'int8'; p.dispatchEvent(new Event('change'))")
    browser.wait_for("document.body.dataset.state === 'ready' && window.lordkit.state.ex.precision === 'int8'")
    pixels = json.dumps([c.ravel().tolist() for c in crops])
    data = browser.eval(f"(async () => Array.from((await window.lordkit.transfer(window.lordkit.state.ex, "
                        f"{pixels}.map(a => Uint8ClampedArray.from(a)), [0, 1])).data))()")
    page = np.asarray(data, np.float32).reshape(3, 2, 3, SIZE, SIZE).transpose(0, 1, 3, 4, 2)
    want = Transfer(out, provider="cpu", precision="int8", warn=lambda line: None).transfer(list(crops), [0, 1])
    err = np.abs(page - want)
    assert err.max() < 1e-2 and err.mean() < 1e-3
