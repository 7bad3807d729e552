"""`lordkit export --web`: a static page that runs an export in the browser with onnxruntime-web.

The page (index.html, lordkit-web.js, README.md) is package data beside this module, in web/. The
onnxruntime-web files come from npm, pinned by web/package-lock.json: `npm ci` into a cache dir
(`$XDG_CACHE_HOME/lordkit/web-<version>`, default ~/.cache/lordkit/...) the first time, copied from
there after; `web_runtime` (`--web-runtime DIR`) points at files downloaded already. The export's
web/ folder is built under a temporary name and renamed into place, then manifest.json gets a `web`
section: the onnxruntime-web version and a sha256 per file, keyed by its path under the export dir
(`web/index.html`). The runtime's `sha256` table is left as it was: its keys are plain file names
of the export dir, and the Python runtime never reads web/.

`python -m lordkit.export.web` fetches the pinned files into the cache and prints where they are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from lordkit import export_format as fmt
from lordkit.errors import LordkitError
from lordkit.fsutil import atomic_write_json, current_umask, read_json, staged_dir

WEB_DIR = "web"  # the folder inside an export dir
PAGE_FILES = ("index.html", "lordkit-web.js", "README.md")  # package data, copied as they are
# The WebGPU build of onnxruntime-web: one ES module and its WebAssembly binary, which runs both the
# WebGPU and the WebAssembly (CPU) execution providers.
RUNTIME_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
NPM_PACKAGE = "onnxruntime-web"


def _assets() -> Any:
    return resources.files("lordkit.export").joinpath("web")


def pinned_version() -> str:
    """The onnxruntime-web version web/package-lock.json pins."""
    lock = json.loads(_assets().joinpath("package-lock.json").read_text(encoding="utf-8"))
    return lock["packages"][f"node_modules/{NPM_PACKAGE}"]["version"]


def cache_dir() -> Path:
    """Where `npm ci` puts the pinned onnxruntime-web: $XDG_CACHE_HOME/lordkit/web-<version>."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return root / "lordkit" / f"web-{pinned_version()}"


def _dist(folder: Path) -> Path | None:
    """The folder holding RUNTIME_FILES: `folder` itself, its dist/, or node_modules/onnxruntime-web/dist."""
    for candidate in (folder, folder / "dist", folder / "node_modules" / NPM_PACKAGE / "dist",
                      folder / "package" / "dist"):
        if all((candidate / name).is_file() for name in RUNTIME_FILES):
            return candidate
    return None


def _how_to_get(version: str) -> str:
    return (f"`npm pack {NPM_PACKAGE}@{version}`, unpack the .tgz and pass --web-runtime <dir>/package/dist "
            f"(or install npm, e.g. apt-get install npm, and run `python -m lordkit.export.web` once)")


def runtime_dir(web_runtime: str | Path | None = None, *, offline: bool | None = None) -> Path:
    """The folder with the onnxruntime-web files to copy: `web_runtime` when given, else the cache,
    filled by `npm ci` from the lock file when empty (only from npm's own cache when offline,
    default: LORDKIT_OFFLINE). LordkitError, one line, when the files cannot be had."""
    version = pinned_version()
    if web_runtime is not None:
        folder = Path(web_runtime).expanduser()
        found = _dist(folder) if folder.is_dir() else None
        if found is None:
            raise LordkitError(f"--web-runtime {folder} does not hold the onnxruntime-web files "
                               f"{', '.join(RUNTIME_FILES)}; get them with {_how_to_get(version)}")
        return found
    cache = cache_dir()
    found = _dist(cache)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise LordkitError(f"--web needs onnxruntime-web {version} and npm is not installed; get the files with "
                           f"{_how_to_get(version)}")
    if offline is None:
        offline = os.environ.get("LORDKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(cache, force=True, what="onnxruntime-web cache") as tmp:
        for name in ("package.json", "package-lock.json"):
            (tmp / name).write_bytes(_assets().joinpath(name).read_bytes())
        cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        if offline:
            cmd.append("--offline")
        try:
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LordkitError(f"npm ci for onnxruntime-web {version} failed: {e}") from None
        if done.returncode != 0 or _dist(tmp) is None:
            lines = (done.stderr or done.stdout).strip().splitlines()
            detail = next((ln for ln in lines if "ERR" in ln and ln.strip()), lines[0] if lines else "no output")
            where = " (offline: only npm's own cache was used)" if offline else ""
            raise LordkitError(f"npm ci for onnxruntime-web {version} failed{where}: {detail.strip()}; or get the "
                               f"files with {_how_to_get(version)}")
    found = _dist(cache)
    assert found is not None
    return found


def web_files(export: Path) -> list[Path]:
    """The files of an export's web/ folder, relative to the export dir."""
    root = export / WEB_DIR
    return sorted(p.relative_to(export) for p in root.rglob("*") if p.is_file())


def add_web(export: str | Path, web_runtime: str | Path | None = None, *, force: bool = False,
            runtime: Path | None = None) -> dict[str, Any]:
    """Add web/ to an existing export dir (replacing one only with `force`); returns the manifest's
    `web` section. `runtime`: a folder already found by runtime_dir (else it is looked up here)."""
    export = Path(export)
    manifest_path = export / fmt.MANIFEST
    if not manifest_path.is_file():
        raise LordkitError(f"{export} is not a lordkit export: it has no {fmt.MANIFEST}")
    manifest = read_json(manifest_path, "export manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT:
        raise LordkitError(f"{manifest_path} is not a {fmt.FORMAT} manifest")
    if os.path.lexists(export / WEB_DIR) and not force:
        raise LordkitError(f"export {export} already has {WEB_DIR}/; remove {export / WEB_DIR} to write it again "
                           "(--force re-exports the whole model)")
    dist = runtime if runtime is not None else runtime_dir(web_runtime)

    with staged_dir(export / WEB_DIR, force=force, what="web page") as tmp:
        assets = _assets()
        for name in PAGE_FILES:
            (tmp / name).write_bytes(assets.joinpath(name).read_bytes())
        for name in RUNTIME_FILES:
            shutil.copyfile(dist / name, tmp / name)
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~current_umask())
        files = {f"{WEB_DIR}/{p.name}": fmt.sha256_file(p) for p in sorted(tmp.iterdir())}

    section = {"onnxruntime_web": pinned_version(), "files": files}
    manifest["web"] = section
    atomic_write_json(manifest_path, manifest)
    return section


def web_bytes(export: Path) -> int:
    return sum((export / p).stat().st_size for p in web_files(export))


# ---------------------------------------------------------------------------------------------
# A headless browser for checking the page: the system's Chromium, driven over the DevTools
# protocol (a websocket) with websocket-client. Nothing is downloaded; tests and benchmarks/web.py use it.

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser binary: $LORDKIT_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("LORDKIT_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Chromium:
    """One headless Chromium with one page, driven over CDP. Use as a context manager: the process
    and its profile dir are gone after it."""

    def __init__(self, binary: str | None = None, *, width: int = 1100, height: int = 900, timeout_s: float = 60.0):
        import tempfile

        self.binary = binary or find_chromium()
        if self.binary is None:
            raise LordkitError("no Chromium found (apt-get install chromium, or set LORDKIT_CHROMIUM)")
        self.timeout_s = timeout_s
        self.width, self.height = width, height
        self.profile = Path(tempfile.mkdtemp(prefix="lordkit-chromium-"))
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def __enter__(self) -> "Chromium":
        import time
        import urllib.request

        import websocket  # websocket-client (the dev extra)

        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check", "--no-sandbox",
             "--disable-extensions", "--disable-background-networking", "--disable-sync", "--mute-audio",
             "--disable-dev-shm-usage", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file, deadline = self.profile / "DevToolsActivePort", time.monotonic() + self.timeout_s
            while not (port_file.is_file() and port_file.read_text().strip()):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise LordkitError(f"{self.binary} did not start its DevTools endpoint")
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=self.timeout_s,
                                                  suppress_origin=True)
            for domain in ("Page", "Runtime"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One CDP command; returns its result (events that arrive meanwhile are kept in self.events)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as JSON."""
        r = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(f"page exception: {d.get('exception', {}).get('description') or d.get('text')}")
        return r["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def wait_for(self, expression: str, timeout_s: float | None = None) -> Any:
        """Poll until the expression is truthy; returns its value."""
        import time

        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is still navigating
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression}; console: {self.console()[-5:]}")
            time.sleep(0.05)

    def set_files(self, selector: str, paths: list[str | Path]) -> None:
        """Choose files in an <input type=file>, as a user would (the page sees its change event)."""
        obj = self.send("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"})
        self.send("DOM.setFileInputFiles", {"files": [str(Path(p).resolve()) for p in paths],
                                            "objectId": obj["result"]["objectId"]})

    def screenshot(self, path: str | Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def console(self) -> list[str]:
        """The page's console lines and uncaught exceptions so far."""
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.consoleAPICalled":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"]))
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append(e["params"]["exceptionDetails"].get("exception", {}).get("description", "exception"))
        return out


def serve(root: str | Path, *, isolated: bool = False):
    """A static HTTP server for `root` on 127.0.0.1 (a free port) in a thread; returns (server, base URL).
    isolated: send COOP/COEP headers, so the page may run multi-threaded WebAssembly. Stop it with
    server.shutdown(); server.server_close()."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

        def end_headers(self) -> None:
            if isolated:
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main() -> int:
    """Fetch the pinned onnxruntime-web into the cache (CI runs this before the browser tests)."""
    try:
        print(runtime_dir(offline=False))
    except LordkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
