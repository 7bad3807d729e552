"""Start the HTTP server: check the settings, take the port, load the model, run uvicorn until
SIGTERM / SIGINT, then drain (uvicorn stops accepting and waits for open requests; the app's
lifespan then lets the batcher finish) and return.

One process by default. With `workers > 1` uvicorn's supervisor starts that many worker processes
sharing the listening socket; each imports `lordkit.serve.app:app_from_env` and loads its own copy
of the model (settings travel in the LORDKIT_SERVE_SETTINGS environment variable). The parent
checks the export and the options first, so that mistakes are one error line, not N tracebacks.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import signal
import socket
from typing import Callable

from lordkit.errors import LordkitError
from lordkit.serve.settings import ENV_SETTINGS, Settings

NEEDS_EXTRA = "lordkit serve needs the serve extra: pip install 'lordkit[serve]'"


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


def _uvicorn_config(settings: Settings, app, **kw):
    import uvicorn

    # In-flight requests end within --timeout-s (504), so the drain never waits longer than that.
    return uvicorn.Config(app, log_level="info", access_log=settings.access_log, lifespan="on",
                          timeout_graceful_shutdown=int(settings.timeout_s) + 5, server_header=False, **kw)


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
    config = _uvicorn_config(settings, "lordkit.serve.app:app_from_env", factory=True, workers=settings.workers)
    say(f"serving {settings.export} at {_url(settings)} with {settings.workers} worker processes "
        f"({settings.onnx_threads} onnxruntime threads each)")
    _quiet_after_drain()
    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn releases take the worker target explicitly
        Multiprocess(config, target=Server(config).run, sockets=[sock]).run()
    else:
        Multiprocess(config, sockets=[sock]).run()


__all__ = ["serve", "bind", "check_installed", "NEEDS_EXTRA"]
