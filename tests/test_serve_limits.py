"""`lordkit serve` against hostile or unlucky connections, on 127.0.0.1: a request line sent by
halves, more connections than allowed, requests h11 cannot parse, and a supervisor killed under its
workers. Servers are `lordkit serve` subprocesses (tests/test_serve.py's Server), stopped by the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from conftest import one_line_error
from factories import make_export, make_model_dir
from test_serve import NAMES, SIZE, HeldRequest, Server, needs_serve, one_json_line, wait_for

HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 4
MARGIN_S = 15.0  # scheduling slack on a busy machine: a bound against hanging, not a speed requirement


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-limits-export")
    model = make_model_dir(root / "model", img_size=SIZE, n_classes=3, class_names=NAMES)
    return make_export(model, root / "export", torchscript=False, batch_sizes=(2,))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    import cv2
    import numpy as np

    path = tmp_path_factory.mktemp("serve-limits-photo") / "photo.png"
    assert cv2.imwrite(str(path), np.random.default_rng(3).integers(0, 256, (40, 36, 3), np.uint8))
    return path


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    s = Server(export, tmp_path_factory.mktemp("serve-limits"), "--header-timeout-s", str(HEADER_TIMEOUT_S),
               "--max-connections", str(MAX_CONNECTIONS), "--threads", "1", "--prep-threads", "1")
    yield s
    assert s.stop() == 0, s.logs()


def read_all(sock: socket.socket, deadline_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    chunks = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            return b"".join(chunks)
        chunks.append(data)
    raise AssertionError(f"the server kept the connection open for {deadline_s} s; got {b''.join(chunks)[:200]!r}")


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def raw_exchange(port: int, data: bytes, deadline_s: float = MARGIN_S) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as sock:
        sock.sendall(data)
        return parse(read_all(sock, deadline_s))


@needs_serve
@pytest.mark.parametrize("sent", [b"GET /hea", b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"],
                         ids=["half-a-request-line", "nothing", "headers-without-their-end"])
def test_a_request_that_stops_halfway_is_closed_after_the_header_timeout(server, sent):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=MARGIN_S) as sock:
        sock.sendall(sent)
        raw = read_all(sock, HEADER_TIMEOUT_S + MARGIN_S)
    elapsed_s = time.monotonic() - t0
    assert elapsed_s >= HEADER_TIMEOUT_S * 0.9, elapsed_s
    status, headers, body = parse(raw)
    assert (status, headers["content-type"], headers["connection"]) == (408, "application/json", "close")
    assert "--header-timeout-s" in one_json_line(body)


@needs_serve
def test_a_trickle_does_not_extend_the_header_deadline(server):
    """One header byte every 0.1 s for up to 20 s: the deadline counts from the connection, not the last byte."""
    import select

    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=MARGIN_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(200):
            if select.select([sock], [], [], 0.1)[0]:  # the server answered: stop sending
                break
            sock.sendall(b"a")
        raw = read_all(sock, MARGIN_S)
    assert time.monotonic() - t0 < 20
    assert parse(raw)[0] == 408


@needs_serve
def test_the_header_deadline_holds_for_later_requests_on_a_kept_alive_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=MARGIN_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"alive"' not in first:
            data = sock.recv(65536)
            assert data, first
            first += data
        assert parse(first)[0] == 200
        t0 = time.monotonic()
        sock.sendall(b"GET /heal")  # the next request, cut short
        status, _, body = parse(read_all(sock, HEADER_TIMEOUT_S + MARGIN_S))
    assert status == 408 and one_json_line(body)
    assert time.monotonic() - t0 >= HEADER_TIMEOUT_S * 0.9


@needs_serve
def test_a_body_trickling_after_its_answer_is_cut_off(server):
    """/healthz does not read bodies: one announced and sent a byte at a time cannot hold the connection."""
    import select

    with socket.create_connection(("127.0.0.1", server.port), timeout=MARGIN_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        answer = b""
        while b'"alive"' not in answer:
            data = sock.recv(65536)
            assert data, answer
            answer += data
        assert parse(answer)[0] == 200
        t0 = time.monotonic()
        closed = False
        for _ in range(200):  # 20 s of trickle at most
            if select.select([sock], [], [], 0.1)[0]:
                try:
                    closed = sock.recv(65536) == b""
                except ConnectionResetError:
                    closed = True
                break
            try:
                sock.sendall(b"a")
            except OSError:
                closed = True
                break
    assert closed and time.monotonic() - t0 < HEADER_TIMEOUT_S + MARGIN_S


@needs_serve
@pytest.mark.parametrize("request_bytes", [
    b"NOT A REQUEST\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nthis header has no colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: twelve\r\n\r\n",
    b"GET /" + b"a" * 20000,  # no end in sight, past h11's 16 KB for a request line and headers
], ids=["request-line", "header-line", "content-length", "too-long"])
def test_a_malformed_request_gets_one_json_line(server, request_bytes):
    status, headers, body = raw_exchange(server.port, request_bytes)
    assert (status, headers["content-type"], headers["connection"]) == (400, "application/json", "close")
    assert "malformed HTTP request" in one_json_line(body)
    assert int(headers["content-length"]) == len(body)


@needs_serve
def test_connections_past_the_limit_get_503_while_the_others_are_served(server, photo):
    # MAX_CONNECTIONS transfer requests whose bodies are half sent hold every connection.
    held = [HeldRequest(server, photo, k % 3) for k in range(MAX_CONNECTIONS)]
    try:
        status, headers, body = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, headers["content-type"], headers["retry-after"]) == (503, "application/json", "1")
        assert "--max-connections" in one_json_line(body)
        # The held requests complete: the server serves them as if nothing had happened.
        status, png = held.pop().finish()
        assert status == 200 and png.startswith(b"\x89PNG")

        # With one connection closed, a new one is served.
        def served() -> bool:
            return raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200

        wait_for(served, "a connection under the limit to be served")
    finally:
        results = [h.finish() for h in held]
    assert [s for s, _ in results] == [200] * len(results)


# ---------------------------------------------------------------------------------------------
# A supervisor killed under its workers.


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its new parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


@needs_serve
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_workers_stop_when_their_supervisor_is_killed(export, tmp_path):
    s = Server(export, tmp_path / "logs", "--workers", "2", "--threads", "1", "--prep-threads", "1",
               "--timeout-s", "10")
    tree: set[int] = set()
    try:
        tree = descendants(s.proc.pid)  # the workers (and multiprocessing's resource tracker)
        assert len(tree) >= 2, s.logs()
        status, _, body = raw_exchange(s.port, b"NOT A REQUEST\r\n\r\n")  # workers run the guarded protocol too
        assert status == 400 and "malformed" in one_json_line(body)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(30)
        deadline = time.monotonic() + 10 + 5 + 10 + MARGIN_S  # --timeout-s, the drain's 5 s, closing, slack
        while time.monotonic() < deadline and any(running(p) for p in tree):
            time.sleep(0.1)
        assert not [p for p in tree if running(p)], s.logs()
        assert port_refuses(s.port), "something still listens on the port"
        assert s.logs().count("Finished server process") == 2, s.logs()  # each drained and ended, not killed
    finally:
        s.stop()
        for p in tree:  # never leave a worker behind, whatever failed above
            if running(p):
                os.kill(p, signal.SIGKILL)


@needs_serve
def test_limit_options_are_checked_before_anything_starts(cli, export):
    assert "--max-connections must be >= 1, got 0" in one_line_error(
        cli("serve", "--model", export, "--max-connections", "0"))
    assert "--header-timeout-s must be a number, got 'soon'" in one_line_error(
        cli("serve", "--model", export, "--header-timeout-s", "soon"))
    assert "--header-timeout-s must be above 0" in one_line_error(
        cli("serve", "--model", export, "--header-timeout-s", "0"))
