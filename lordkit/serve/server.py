"""Start the HTTP server: check the settings, take the port, load the model, run uvicorn until
SIGTERM / SIGINT, then drain (uvicorn stops accepting and waits for open requests; the app's
lifespan then lets the batcher finish) and return.

One process by default. With `workers > 1` uvicorn's supervisor starts that many worker processes
sharing the listening socket; each runs the app factory `worker_app` below and loads its own copy
of the model (settings travel in the LORDKIT_SERVE_SETTINGS environment variable). The parent
checks the export and the options first, so that mistakes are one error line, not N tracebacks.
A worker whose supervisor dies (kill -9 included) stops by itself: nothing would stop it otherwise.

Connections are served by `GuardedH11Protocol`, uvicorn's h11 protocol with what a public port
needs and uvicorn lacks: a deadline for a request's headers (a client that sends half a request
line and waits holds a connection for ever otherwise), a bound on open connections, and malformed
requests answered with the API's one JSON line instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import http
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

from lordkit.errors import LordkitError
from lordkit.serve.settings import ENV_SETTINGS, Settings

try:  # the serve extra; without it check_installed() says so before anything below is used
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol as _H11Protocol
except ImportError:
    h11 = None
    _H11Protocol = object

NEEDS_EXTRA = "lordkit serve needs the serve extra: pip install 'lordkit[serve]'"
ENV_PARENT = "LORDKIT_SERVE_PARENT"  # the supervisor's pid, which each worker watches
PARENT_POLL_S = 0.5  # how often a worker looks whether its supervisor is still there
PR_SET_PDEATHSIG = 1  # linux/prctl.h: a signal for this process when its parent dies
MALFORMED = "malformed HTTP request: the request line or headers cannot be parsed, or are too long"
log = logging.getLogger("lordkit.serve")


def check_installed() -> None:
    """LordkitError naming the extra when Starlette, uvicorn or python-multipart is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LordkitError(NEEDS_EXTRA) from None
    for name in ("python_multipart", "multipart"):  # the module's name before python-multipart 0.0.13
        try:
            importlib.import_module(name)
            return
        except ImportError:
            pass
    raise LordkitError(NEEDS_EXTRA)


_BIND_ERRORS = {errno.EADDRINUSE: "address already in use",
                errno.EACCES: "permission denied (ports below 1024 need privileges)",
                errno.EADDRNOTAVAIL: "this machine has no such address"}


def bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket, or LordkitError: `cannot listen on HOST:PORT: why`."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise LordkitError(f"cannot listen on {where}: {e.strerror or 'unknown host'}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise LordkitError(f"cannot listen on {where}: "
                           f"{_BIND_ERRORS.get(e.errno or -1, (e.strerror or str(e)).lower())}") from None
    sock.set_inheritable(True)
    return sock


def _precheck(settings: Settings) -> None:
    """What a worker would fail on, checked once in the parent: provider name, export, face options."""
    from lordkit.export_format import RUNTIME_NETWORKS
    from lordkit.runtime import Bundle, Preparer, select_device

    select_device(settings.provider, None)
    b = Bundle(settings.export, verify="all")
    for network in RUNTIME_NETWORKS:
        b.model_path(network, settings.precision)  # the files --precision asks for exist
    Preparer(b.img_size, b.channels, b.face_template, b.face_points, landmarks=settings.landmarks,
             detector=settings.detector)


def _drain_s(settings: Settings) -> int:
    # In-flight requests end within --timeout-s (504), so the drain never waits longer than that.
    return int(settings.timeout_s) + 5


def _uvicorn_config(settings: Settings, app, **kw):
    import uvicorn

    protocol = functools.partial(GuardedH11Protocol, header_timeout_s=settings.header_timeout_s,
                                 max_connections=settings.max_connections)
    return uvicorn.Config(app, http=protocol, ws="none", log_level="info", access_log=settings.access_log,
                          lifespan="on", timeout_graceful_shutdown=_drain_s(settings), server_header=False, **kw)


def _json_line(message: str) -> bytes:
    """The API's error body (lordkit.serve.app.error): one line of JSON."""
    return (json.dumps({"error": message}) + "\n").encode()


class GuardedH11Protocol(_H11Protocol):
    """uvicorn's h11 protocol, plus: a connection that has not sent a whole request line and headers
    `header_timeout_s` after it opened (or after its first byte of a later request) gets 408 and is
    closed; a connection opened while `max_connections` others are open gets 503 to its request and
    is closed; a request h11 cannot parse gets 400. Each answer is the API's one JSON line. A body
    still trickling in after its answer was sent (a route that did not read it) is cut off as long
    after its first late byte: uvicorn's keep-alive timer, which would close it, stops at every byte."""

    def __init__(self, *args, header_timeout_s: float, max_connections: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_connections = header_timeout_s, max_connections
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # counts this connection in self.connections
        if len(self.connections) > self.max_connections:
            self.app = functools.partial(_too_many_connections, self.max_connections)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.transport.is_closing() and (self._awaiting_headers() or self._answered_body()):
            self._arm()  # no-op while armed: the deadline runs from the request's first byte
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _answered_body(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY and self.cycle is not None and self.cycle.response_complete

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._awaiting_headers():
            self._answer_and_close(408, f"the request line and headers did not arrive within "
                                        f"{self.header_timeout_s:g} s (--header-timeout-s)")
        elif self._answered_body():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to what h11 cannot parse
        self._answer_and_close(400, MALFORMED)

    def _answer_and_close(self, status: int, message: str) -> None:
        body = _json_line(message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=headers,
                                              reason=http.HTTPStatus(status).phrase.encode()))
            out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
            self.transport.write(out)
        except h11.LocalProtocolError:  # a response is already under way: closing is all that is left
            pass
        self.transport.close()


async def _too_many_connections(limit: int, scope, receive, send) -> None:
    """The ASGI app of a connection opened past --max-connections: 503, then the connection closes."""
    body = _json_line(f"too many open connections (this server keeps {limit} at most, --max-connections); "
                      "try again")
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def serve(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Run the server until it is told to stop; LordkitError for anything wrong before it listens."""
    check_installed()
    settings.check()
    from lordkit.serve.app import configure_logging

    configure_logging()
    sock = bind(settings.host, settings.port)  # before loading: a taken port fails in a second
    try:
        if settings.workers == 1:
            _serve_one(settings, sock, say)
        else:
            _serve_workers(settings, sock, say)
    finally:
        sock.close()


def _url(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def _quiet_after_drain() -> None:
    # uvicorn re-raises the signal that stopped it once it has drained; by then there is nothing
    # left to do, so the process ends normally (exit status 0) instead of as killed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)


def _serve_one(settings: Settings, sock: socket.socket, say: Callable[[str], None]) -> None:
    import uvicorn

    from lordkit.serve.app import create_app
    from lordkit.serve.service import Service

    service = Service(settings)
    say(f"serving {settings.export} at {_url(settings)} on {service.transfer.device} (max batch "
        f"{settings.max_batch}, max wait {settings.max_wait_ms:g} ms, queue {settings.queue})")
    server = uvicorn.Server(_uvicorn_config(settings, create_app(service)))
    _quiet_after_drain()
    server.run(sockets=[sock])
    if not server.started:
        service.close()
        raise LordkitError("the server did not start; see the log lines above")


def _serve_workers(settings: Settings, sock: socket.socket, say: Callable[[str], None]) -> None:
    from uvicorn import Server
    from uvicorn.supervisors import Multiprocess

    _precheck(settings)
    os.environ[ENV_SETTINGS] = settings.to_env()
    os.environ[ENV_PARENT] = str(os.getpid())
    config = _uvicorn_config(settings, "lordkit.serve.server:worker_app", factory=True, workers=settings.workers)
    say(f"serving {settings.export} at {_url(settings)} with {settings.workers} worker processes "
        f"({settings.onnx_threads} onnxruntime threads each)")
    _quiet_after_drain()
    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn releases take the worker target explicitly
        Multiprocess(config, target=Server(config).run, sockets=[sock]).run()
    else:
        Multiprocess(config, sockets=[sock]).run()


def worker_app():
    """The app factory of each worker process: stop with the supervisor, then the app from the environment."""
    from lordkit.serve.app import app_from_env

    parent = os.environ.get(ENV_PARENT, "")
    if parent.isdigit():
        try:
            grace_s = _drain_s(Settings.from_env()) + 10  # the drain, then closing the model
        except LordkitError:
            grace_s = 60  # app_from_env reports the settings' error and ends the worker
        exit_with_parent(int(parent), grace_s)
    return app_from_env()


def exit_with_parent(parent_pid: int, grace_s: float) -> None:
    """Stop this process once `parent_pid` is no longer its parent (the supervisor died, kill -9 included):
    SIGTERM to itself, which drains as a SIGTERM from the supervisor would, and an exit after `grace_s`
    at the latest. On Linux the kernel sends the SIGTERM at once (prctl PR_SET_PDEATHSIG); a thread
    polling the parent's pid covers other systems and a parent that died before the prctl."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        log.warning("the supervising process %d is gone; stopping worker %d", parent_pid, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)  # the drain did not end in time

    threading.Thread(target=watch, name="lordkit-parent-watch", daemon=True).start()


__all__ = ["serve", "bind", "check_installed", "worker_app", "exit_with_parent", "GuardedH11Protocol", "NEEDS_EXTRA"]
