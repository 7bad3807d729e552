"""`lordkit serve` and lordkit.client against real server processes on 127.0.0.1.

Servers run an export of a tiny untrained model (tests/factories.py) and are started as
`python -m lordkit serve ...` subprocesses on free ports; every fixture stops its server in a
finalizer. Results are compared pixel for pixel with lordkit.runtime.Transfer in this process.
The batcher itself is tested without a server.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import one_line_error
from factories import make_export, make_model_dir

from lordkit.serve.batcher import Batcher, BatcherClosed

SIZE = 32
NAMES = ["circle", "square", "star"]
CELEBA_TEMPLATE = [[0.37, 0.46], [0.63, 0.46], [0.5, 0.6], [0.4, 0.74], [0.6, 0.74]]
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # a bound against hanging, not a speed requirement

SERVE_INSTALLED = all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn")) and bool(
    importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart"))
needs_serve = pytest.mark.skipif(not SERVE_INSTALLED, reason="the serve extra is not installed: pip install '.[serve]'")


# ---------------------------------------------------------------------------------------------
# The batcher, in process.


class Recorder:
    """A fake network: doubles its input, records each call's row count, can block until released."""

    def __init__(self, block: bool = False):
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        self.entered.set()
        assert self.release.wait(60)
        if np.any(x < 0):
            raise ValueError("negative input")
        return x * 2


def test_batcher_puts_rows_of_several_jobs_into_one_call():
    model = Recorder()
    b = Batcher({"net": model}, max_batch=3, max_wait_s=60.0)  # the batch fills long before the wait ends
    try:
        futures = [b.submit("net", x=np.full((1, 2), k, np.float32)) for k in range(3)]
        results = [f.result(timeout=60) for f in futures]
    finally:
        b.close()
    assert model.calls == [3]
    for k, r in enumerate(results):
        assert np.array_equal(r, np.full((1, 2), 2 * k, np.float32))


def test_batcher_splits_a_big_job_and_keeps_its_rows_in_order():
    model = Recorder()
    b = Batcher({"net": model}, max_batch=4, max_wait_s=0.0)
    try:
        x = np.arange(20, dtype=np.float32).reshape(10, 2)
        out = b.submit("net", x=x).result(timeout=60)
    finally:
        b.close()
    assert model.calls == [4, 4, 2]
    assert np.array_equal(out, x * 2)


def test_batcher_skips_cancelled_jobs_reports_errors_and_drains_on_close():
    model = Recorder(block=True)
    b = Batcher({"net": model}, max_batch=8, max_wait_s=0.0)
    first = b.submit("net", x=np.ones((1, 1), np.float32))
    assert model.entered.wait(60)  # the first job is running; the next ones queue behind it
    cancelled = b.submit("net", x=np.ones((2, 1), np.float32))
    bad = b.submit("net", x=-np.ones((1, 1), np.float32))
    assert cancelled.cancel()
    closer = threading.Thread(target=b.close)
    closer.start()  # close() waits for the queued job, which runs once the model is released
    model.release.set()
    closer.join(60)
    assert not closer.is_alive()
    assert np.array_equal(first.result(timeout=1), np.full((1, 1), 2, np.float32))
    with pytest.raises(ValueError, match="negative input"):
        bad.result(timeout=1)
    assert model.calls == [1, 1]  # the cancelled job's two rows never ran
    with pytest.raises(BatcherClosed):
        b.submit("net", x=np.ones((1, 1), np.float32))


# ---------------------------------------------------------------------------------------------
# Helpers: exports, images, multipart, server processes.


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-export")
    model = make_model_dir(root / "model", img_size=SIZE, n_classes=3, class_names=NAMES)
    return make_export(model, root / "export", torchscript=False, batch_sizes=(2,))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Random RGB photos of a few sizes, all at least the model's 32 px."""
    d = tmp_path_factory.mktemp("serve-photos")
    rng = np.random.default_rng(7)
    out = []
    for k in range(12):
        h, w = 32 + 8 * (k % 3), 32 + 4 * (k % 4)
        path = d / f"photo{k}.png"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), np.uint8))
        out.append(path)
    return out


@pytest.fixture(scope="module")
def runtime(export):
    from lordkit.runtime import Transfer

    return Transfer(export, provider="cpu", warn=None)


def expected(runtime, content: Path, cls) -> np.ndarray:
    """The in-process runtime's uint8 result for one pair (RGB)."""
    from lordkit.runtime import to_uint8_image

    return to_uint8_image(runtime.transfer([content], [cls])[0, 0])


def multipart(files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]] = ()) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data form: files are (field, file name, bytes)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="{f}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for n, f, data in files]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode() for n, v in fields]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img[..., ::-1]


class Server:
    """A `lordkit serve` subprocess; logs go to files (a full pipe would stall the server)."""

    def __init__(self, export: Path, log_dir: Path, *args: str, argv: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out = open(log_dir / "stdout.log", "w+")
        self.err = open(log_dir / "stderr.log", "w+")
        cmd = argv or [sys.executable, "-m", "lordkit"]
        self.proc = subprocess.Popen([*cmd, "serve", "--model", str(export), "--port", str(self.port), *args],
                                     stdout=self.out, stderr=self.err, cwd=REPO)
        self.wait_ready()

    def logs(self) -> str:
        return (self.log_dir / "stderr.log").read_text() + (self.log_dir / "stdout.log").read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        pytest.fail(f"the server was not ready within {START_TIMEOUT_S} s:\n{self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.err.close()
        return self.proc.returncode

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def post(self, path: str, files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]] = (),
             accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
        body, ctype = multipart(files, fields)
        headers = {"Content-Type": ctype, **({"Accept": accept} if accept else {})}
        return self.request("POST", path, body, headers)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            m = re.fullmatch(r"([a-z_]+)(\{.*\})? (\S+)", line)
            if m and m.group(1) == name:
                have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
                if all(have.get(k) == v for k, v in labels.items()):
                    total += float(m.group(3))
        return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file(field: str, path: Path) -> tuple[str, str, bytes]:
    return field, path.name, path.read_bytes()


def one_json_line(body: bytes) -> str:
    """Error bodies are one line of JSON: {"error": "..."}."""
    text = body.decode()
    assert text.count("\n") <= 1 and text.strip(), text
    doc = json.loads(text)
    assert list(doc) == ["error"] and doc["error"] and "\n" not in doc["error"]
    return doc["error"]


class HeldRequest:
    """A transfer request whose body is sent in two parts: the server has admitted it and waits for the rest."""

    def __init__(self, server: Server, content: Path, class_id: int):
        self.body, ctype = multipart([file("content", content)], [("class_id", str(class_id))])
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        self.conn.putrequest("POST", "/v1/transfer")
        self.conn.putheader("Content-Type", ctype)
        self.conn.putheader("Content-Length", str(len(self.body)))
        self.conn.endheaders()
        self.conn.send(self.body[:100])

    def finish(self) -> tuple[int, bytes]:
        self.conn.send(self.body[100:])
        r = self.conn.getresponse()
        data = r.read()
        self.conn.close()
        return r.status, data


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    s = Server(export, tmp_path_factory.mktemp("serve-main"), "--max-batch", "8", "--max-wait-ms", "50",
               "--queue", "256", "--max-body-mb", "1", "--threads", "1", "--prep-threads", "2")
    yield s
    assert s.stop() == 0, s.logs()


# ---------------------------------------------------------------------------------------------
# The main server: results, batching, errors, documentation, the client.


@needs_serve
def test_64_concurrent_requests_match_the_runtime(server, runtime, photos):
    """Single pairs (PNG) and 1 x 2 pairs (JSON), with class photos, ids and names, all at once."""
    classes = [photos[10], 0, "square", photos[11], 2, "star"]
    jobs = []
    for k in range(64):
        content, cls, other = photos[k % 10], classes[k % len(classes)], classes[(k + 1) % len(classes)]
        jobs.append((content, [cls] if k % 4 else [cls, other]))

    def form(cls) -> tuple[list, list]:
        if isinstance(cls, Path):
            return [file("class", cls)], []
        return [], [("class_id" if isinstance(cls, int) else "class_name", str(cls))]

    barrier = threading.Barrier(len(jobs))

    def send(job):
        content, class_list = job
        files, fields = [file("content", content)], []
        for cls in [c for c in class_list if isinstance(c, Path)] + [c for c in class_list if not isinstance(c, Path)]:
            f, v = form(cls)
            files += f
            fields += v
        barrier.wait()
        return server.post("/v1/transfer", files, fields)

    rows_before = server.metric("lordkit_batch_size_sum", network="content_encoder")
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, jobs))

    for (content, class_list), (status, headers, body) in zip(jobs, answers):
        assert status == 200, body[:300]
        # The server orders classes: photos first, then ids and names in form order.
        ordered = [c for c in class_list if isinstance(c, Path)] + [c for c in class_list if not isinstance(c, Path)]
        if len(ordered) == 1:
            assert headers["content-type"] == "image/png"
            got = [decode(body)]
        else:
            doc = json.loads(body)
            assert [(i["content"], i["class"]) for i in doc["images"]] == [(0, 0), (0, 1)]
            got = [decode(base64.b64decode(i["png"])) for i in doc["images"]]
        for img, cls in zip(got, ordered):
            want = expected(runtime, content, cls)
            assert img.shape == (SIZE, SIZE, 3)
            assert np.array_equal(img, want), f"{content.name} in {cls}: max diff {np.abs(img.astype(int) - want).max()}"

    # Every content row went through the batcher; single-content requests shared calls.
    rows = server.metric("lordkit_batch_size_sum", network="content_encoder") - rows_before
    assert rows == len(jobs)
    assert server.metric("lordkit_batch_size_bucket", network="content_encoder", le="1") < server.metric(
        "lordkit_batch_size_count", network="content_encoder")
    assert server.metric("lordkit_http_requests_total", route="/v1/transfer", status="200") >= len(jobs)


@needs_serve
def test_bad_inputs_get_their_status_and_one_json_line(server, photos):
    good = file("content", photos[0])
    png = photos[0].read_bytes()
    small = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    # A PNG whose header says 20000 x 20000: refused from the header, never decoded.
    huge = png[:16] + (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big") + png[24:]
    cases = [
        (400, "not an image", [("content", "notes.png", b"these are words, not pixels")], [("class_id", "0")]),
        (400, "cannot decode", [("content", "cut.png", png[: len(png) // 2])], [("class_id", "0")]),
        (400, "smaller than this model", [("content", "small.png", small)], [("class_id", "0")]),
        (413, "MP", [("content", "huge.png", huge)], [("class_id", "0")]),
        (422, "did you mean square", [good], [("class_name", "sqare")]),
        (422, "out of range", [good], [("class_id", "7")]),
        (400, "class_id must be an integer", [good], [("class_id", "x")]),
        (400, "at least one class", [good], []),
        (400, "at least one content image", [], [("class_id", "0")]),
        (400, "unknown form field 'colour'", [good], [("class_id", "0"), ("colour", "red")]),
        (400, "paste_back needs a face model", [good], [("class_id", "0"), ("paste_back", "true")]),
        (400, "paste_back must be true or false", [good], [("class_id", "0"), ("paste_back", "maybe")]),
        (413, "--max-pairs", [good], [("class_id", "0")] * 300),
    ]
    for status, words, files, fields in cases:
        got, headers, body = server.post("/v1/transfer", files, fields)
        assert (got, headers["content-type"]) == (status, "application/json"), (words, got, body)
        assert words in one_json_line(body), body
    # The upload is named in messages, not the server's temporary file.
    assert "content[0] (notes.png)" in one_json_line(server.post("/v1/transfer", cases[0][2], cases[0][3])[2])

    status, _, body = server.request("POST", "/v1/transfer", b'{"content": 1}', {"Content-Type": "application/json"})
    assert status == 415 and "multipart/form-data" in one_json_line(body)
    status, _, body = server.request("GET", "/v1/nothing")
    assert status == 404 and "no route GET /v1/nothing" in one_json_line(body)
    status, headers, body = server.request("GET", "/v1/transfer")
    assert status == 405 and "POST" in headers.get("allow", "") and one_json_line(body)


@needs_serve
def test_a_body_above_the_limit_is_refused_before_it_is_read(server):
    # The client announces 2 MB and waits (Expect: 100-continue): the 413 comes without the body.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.putrequest("POST", "/v1/transfer")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(2 * 2 ** 20))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert r.status == 413 and "--max-body-mb" in one_json_line(body)


@needs_serve
def test_a_streamed_body_is_cut_off_at_the_limit():
    import asyncio

    from lordkit.serve.app import BodyTooLarge, _limited

    chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(3)]

    async def receive():
        return chunks.pop(0)

    async def read_all(limit: int) -> int:
        wrapped, n = _limited(receive, limit), 0
        for _ in range(3):
            n += len((await wrapped())["body"])
        return n

    with pytest.raises(BodyTooLarge):
        asyncio.run(read_all(1000))
    chunks[:] = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(3)]
    assert asyncio.run(read_all(1200)) == 1200


@needs_serve
def test_encoders_classes_and_model_routes(server, runtime, photos):
    status, _, body = server.post("/v1/encode/content", [file("content", p) for p in photos[:3]])
    assert status == 200
    doc = json.loads(body)
    assert doc["labels"] == ["photo0", "photo1", "photo2"] and doc["dim"] == runtime.bundle.content_dim
    assert np.array_equal(np.asarray(doc["codes"], np.float32), runtime.content_codes(photos[:3]))

    status, _, body = server.post("/v1/encode/class", [file("class", photos[3])],
                                  [("class_name", "star"), ("class_id", "1")])
    assert status == 200
    doc = json.loads(body)
    assert doc["labels"] == ["photo3", "square", "star"]  # images, then ids, then names
    assert np.array_equal(np.asarray(doc["codes"], np.float32), runtime.class_codes([photos[3], 1, "star"]))

    status, _, body = server.request("GET", "/v1/classes")
    assert json.loads(body) == {"classes": [{"id": i, "name": n} for i, n in enumerate(NAMES)]}
    status, _, body = server.request("GET", "/v1/model")
    info = json.loads(body)
    assert (info["img_size"], info["n_classes"], info["face"], info["max_batch"]) == (SIZE, 3, False, 8)


@needs_serve
def test_health_readiness_and_metrics(server):
    assert server.request("GET", "/healthz")[0] == 200
    status, _, body = server.request("GET", "/readyz")
    assert status == 200 and json.loads(body)["queue_limit"] == 256
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    for line in text.splitlines():  # every line is a comment or `name{labels} value`
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \S+', line), line
    for name in ("lordkit_http_requests_total", "lordkit_http_request_duration_seconds", "lordkit_batch_size",
                 "lordkit_queue_depth", "lordkit_queue_rows"):
        assert f"# TYPE {name} " in text
    assert server.metric("lordkit_http_requests_total", route="/readyz", status="200") >= 1
    assert server.metric("lordkit_queue_depth") == 0


@needs_serve
def test_openapi_document_matches_the_routes(server, export):
    status, _, body = server.request("GET", "/openapi.json")
    assert status == 200
    spec = json.loads(body)
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    # The app's own routing table, built in this process around the same export.
    from lordkit.serve.app import create_app
    from lordkit.serve.service import Service
    from lordkit.serve.settings import Settings

    service = Service(Settings(export=str(export), provider="cpu", threads=1))
    try:
        app = create_app(service)
        routed = {(r.path, m) for r in app.routes for m in r.methods if m != "HEAD"}
    finally:
        service.close()
    assert routed == documented
    page = server.request("GET", "/docs")[2].decode()
    for path, method in documented:  # every documented route answers, and is on the HTML page
        assert f"{method} {path}" in page
        status = server.request(method, path, b"" if method == "POST" else None)[0]
        assert status not in (404, 405), (method, path, status)


@needs_serve
def test_client_against_the_server(server, runtime, photos):
    from lordkit.client import Client, ServerError

    c = Client(server.url)
    assert c.classes() == NAMES
    assert c.health()["ready"] and c.model()["img_size"] == SIZE
    out = c.transfer(photos[:2], class_id=1, class_name="star", class_image=photos[5])
    assert out.shape == (2, 3, SIZE, SIZE, 3) and out.dtype == np.uint8
    for i in range(2):
        for j, cls in enumerate([photos[5], 1, "star"]):
            assert np.array_equal(out[i, j], expected(runtime, photos[i], cls))
    array = cv2.imread(str(photos[3]))[..., ::-1]  # an RGB array is sent as PNG
    assert np.array_equal(c.transfer(array, class_id=0)[0, 0], expected(runtime, photos[3], 0))
    assert np.array_equal(c.encode_content(photos[:2]), runtime.content_codes(photos[:2]))
    assert np.array_equal(c.encode_class(photos[4], class_id=[2]), runtime.class_codes([photos[4], 2]))
    with pytest.raises(ServerError) as e:
        c.transfer(photos[0], class_name="triangle")
    assert e.value.status == 422 and "unknown class name 'triangle'" in e.value.message
    down = Client(f"http://127.0.0.1:{free_port()}", timeout=10)
    assert down.health() == {"alive": False, "ready": False, "detail": down.health()["detail"]}
    with pytest.raises(ServerError) as e:
        down.classes()
    assert e.value.status == 0 and "cannot reach" in e.value.message


# ---------------------------------------------------------------------------------------------
# Back-pressure, shutdown, workers.


@needs_serve
def test_overload_gives_503_with_retry_after(export, photos, tmp_path):
    s = Server(export, tmp_path / "overload", "--queue", "1", "--max-batch", "1", "--threads", "1")
    try:
        held = HeldRequest(s, photos[0], 1)  # admitted: the one place in the queue is taken
        wait_for(lambda: s.request("GET", "/readyz")[0] == 503, "the held request to fill the queue")
        form = [file("content", photos[1])], [("class_id", "0")]
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _: s.post("/v1/transfer", *form), range(8)))
        for status, headers, body in burst:
            assert status == 503 and headers["retry-after"] == "1" and "queue full" in one_json_line(body)
        status, body = held.finish()
        assert status == 200 and decode(body).shape == (SIZE, SIZE, 3)
        assert s.post("/v1/transfer", *form)[0] == 200  # the queue has room again
        assert s.request("GET", "/readyz")[0] == 200
        assert s.metric("lordkit_http_requests_total", route="/v1/transfer", status="503") == 8
    finally:
        assert s.stop() == 0, s.logs()


@needs_serve
def test_sigterm_finishes_requests_in_flight_and_exits_0(export, photos, runtime, tmp_path):
    # This server runs with torch unimportable: the serve package must never need it.
    argv = [sys.executable, "-c", "import runpy, sys; sys.modules['torch'] = None; "
            "sys.argv[0] = 'lordkit'; runpy.run_module('lordkit', run_name='__main__')"]
    s = Server(export, tmp_path / "sigterm", "--threads", "1", argv=argv)
    try:
        held = [HeldRequest(s, photos[k], k % 3) for k in range(3)]
        wait_for(lambda: s.metric("lordkit_queue_depth") == 3, "three requests in flight")
        s.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
                return False
            except OSError:
                return True

        wait_for(refused, "the server to stop accepting")
        for k, h in enumerate(held):
            status, body = h.finish()
            assert status == 200, body
            assert np.array_equal(decode(body), expected(runtime, photos[k], k % 3))
        assert s.proc.wait(START_TIMEOUT_S) == 0, s.logs()
        assert "Traceback" not in s.logs()
    finally:
        s.stop()


@needs_serve
def test_workers_each_load_the_model_and_stop_on_sigterm(export, photos, runtime, tmp_path):
    s = Server(export, tmp_path / "workers", "--workers", "2")
    try:
        status, _, body = s.post("/v1/transfer", [file("content", photos[2])], [("class_name", "circle")])
        assert status == 200 and np.array_equal(decode(body), expected(runtime, photos[2], "circle"))
        assert "with 2 worker processes" in s.logs()
    finally:
        assert s.stop() == 0, s.logs()


# ---------------------------------------------------------------------------------------------
# A face model: alignment and paste-back.


@needs_serve
def test_face_model_pastes_back_and_reports_missing_faces(tmp_path, photos):
    from lordkit import faces
    from lordkit.errors import LordkitError
    from lordkit.runtime import Transfer, to_uint8_image

    spec = importlib.util.find_spec("skimage")
    astronaut = Path(spec.submodule_search_locations[0]) / "data" / "astronaut.png" if spec else None
    if astronaut is None or not astronaut.is_file():
        pytest.skip("scikit-image's astronaut.png is needed for a face photo")
    try:
        faces.find_model_file("shape68")
    except LordkitError as e:
        pytest.skip(str(e))
    model = make_model_dir(tmp_path / "face-model", img_size=SIZE, n_classes=2, face_template=CELEBA_TEMPLATE)
    face_export = make_export(model, tmp_path / "face-export", torchscript=False, batch_sizes=(2,))
    s = Server(face_export, tmp_path / "face", "--threads", "1")
    try:
        status, headers, body = s.post("/v1/transfer", [file("content", astronaut)],
                                       [("class_id", "1"), ("paste_back", "true")])
        assert status == 200 and headers["content-type"] == "image/png"
        t = Transfer(face_export, provider="cpu", warn=None)
        [face] = t.prepare(astronaut)
        want = t.paste_back(face, to_uint8_image(t.transfer([face], [1])[0, 0]))
        assert np.array_equal(decode(body), want)
        status, _, body = s.post("/v1/transfer", [file("content", photos[0])], [("class_id", "0")])
        assert status == 422 and "no face found in content[0] (photo0.png)" in one_json_line(body)
        status, _, body = s.post("/v1/transfer", [file("content", photos[0])], [("class_id", "0"), ("align", "false")])
        assert status == 200  # an aligned crop: centre square, no face search
    finally:
        assert s.stop() == 0, s.logs()


# ---------------------------------------------------------------------------------------------
# The command line's errors (no server starts).


@needs_serve
def test_cli_errors_are_one_line(cli, export):
    assert "unknown provider 'tpu'" in one_line_error(cli("serve", "--model", export, "--provider", "tpu"))
    assert "--port must be from 1 to 65535, got 70000" in one_line_error(cli("serve", "--model", export, "--port", "70000"))
    assert "--port must be an integer, got 'http'" in one_line_error(cli("serve", "--model", export, "--port", "http"))
    assert "--max-batch must be >= 1, got 0" in one_line_error(cli("serve", "--model", export, "--max-batch", "0"))
    assert "--precision must be fp32, fp16 or int8, got 'int4'" in one_line_error(
        cli("serve", "--model", export, "--precision", "int4"))
    assert "has no int8 files; re-export with --int8" in one_line_error(
        cli("serve", "--model", export, "--precision", "int8"))
    assert "export not found: nowhere" in one_line_error(cli("serve", "--model", "nowhere"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(cli("serve", "--model", export, "--port", str(port)))
    assert line == f"error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_cli_without_the_extra_names_it():
    code = ("import sys; sys.modules['starlette'] = None; from lordkit.cli.app import main; "
            "sys.argv[0] = 'lordkit'; main()")
    r = subprocess.run([sys.executable, "-c", code, "serve", "--model", "x"], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env={**os.environ})
    assert r.returncode == 2
    assert r.stderr.strip() == "error: lordkit serve needs the serve extra: pip install 'lordkit[serve]'"
