"""The Starlette application: routes (documented in lordkit.serve.openapi), admission, limits, errors.

Every POST route is admitted first: past --queue requests in flight it answers 503 with Retry-After,
before reading the body. A Content-Length above --max-body-mb is answered 413 before the body is
read, and a body that grows past it while streaming (chunked) is cut off with 413. Each request
has --timeout-s from arrival to response (504). Errors are one JSON line: {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sys
import time
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

import lordkit
from lordkit.errors import BadInput, Hint, LordkitError
from lordkit.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lordkit.serve.openapi import ROUTES, docs_page, openapi
from lordkit.runtime.job import TransferJob, TransferOptions, pair_of, result_name
from lordkit.serve.service import PreparedInput, Problem, Service, Upload, encode_png, parse_class_ids, problem
from lordkit.serve.settings import Settings

log = logging.getLogger("lordkit.serve")

RETRY_AFTER_S = 1
TRANSFER_FIELDS = {"content": "file", "class": "file", "class_id": "text", "class_name": "text",
                   "paste_back": "text", "align": "text"}
CONTENT_FIELDS = {"content": "file", "align": "text"}
CLASS_FIELDS = {"class": "file", "class_id": "text", "class_name": "text", "align": "text"}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

Handler = Callable[[Service, Request], Awaitable[Response]]


class BodyTooLarge(Exception):
    """The body streamed past --max-body-mb."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": " ".join(str(message).split())}) + "\n"
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _limited(receive, limit: int):
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge()
        return message

    return wrapped


# -- the form ------------------------------------------------------------------------------------


async def read_form(request: Request, allowed: dict[str, str], max_files: int) -> tuple[dict[str, list[Upload]],
                                                                                      dict[str, list[str]]]:
    """Files and text values of a multipart form, by field; unknown or misused fields are 400."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise Problem(415, "send the images as multipart/form-data (curl -F content=@photo.jpg ...)")
    files: dict[str, list[Upload]] = {}
    texts: dict[str, list[str]] = {}
    async with request.form(max_files=max_files, max_fields=max_files + 16) as form:
        for key, value in form.multi_items():
            kind = allowed.get(key)
            if kind is None:
                raise Problem(400, f"unknown form field {key!r}; this route takes {', '.join(allowed)}")
            if isinstance(value, UploadFile):
                if kind != "file":
                    raise Problem(400, f"{key} must be a text field, not a file")
                got = files.setdefault(key, [])
                got.append(Upload(key, len(got), value.filename, await value.read()))
            elif kind == "file":
                raise Problem(400, f"{key} must be an image file upload (curl -F {key}=@photo.jpg)")
            else:
                texts.setdefault(key, []).append(value)
    return files, texts


def flag(texts: dict[str, list[str]], name: str, default: bool) -> bool:
    values = texts.get(name, [])
    if not values:
        return default
    if len(values) > 1:
        raise Problem(400, f"{name} is given {len(values)} times; give it once")
    value = values[0].strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise Problem(400, f"{name} must be true or false, got {values[0]!r}")


def _check_count(service: Service, n: int, what: str) -> None:
    limit = service.settings.max_pairs
    if n > limit:
        raise Problem(413, f"{what} {n}, above this server's limit of {limit} (--max-pairs); split the request")


def _warnings(inputs: list[PreparedInput]) -> list[str]:
    return [w for p in inputs for w in p.warnings]


def _json(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


# -- routes --------------------------------------------------------------------------------------


def _job(service: Service, files: dict[str, list[Upload]], texts: dict[str, list[str]], paste: bool,
         align: bool) -> TransferJob:
    """The form's transfer request, checked against the server's limits and the export."""
    job = TransferJob(contents=files.get("content", []), class_images=files.get("class", []),
                      class_ids=parse_class_ids(texts.get("class_id", [])), class_names=texts.get("class_name", []),
                      options=TransferOptions(align=align, paste_back=paste))
    job.check()
    n, m = len(job.contents), job.n_classes
    _check_count(service, n * m, f"{n} content images x {m} classes make")
    job.check(service.bundle)  # before any decoding: a typo costs nothing
    return job


async def transfer(service: Service, request: Request) -> Response:
    files, texts = await read_form(request, TRANSFER_FIELDS, 2 * service.settings.max_pairs)
    paste, align = flag(texts, "paste_back", False), flag(texts, "align", True)
    job = _job(service, files, texts, paste, align)
    n = len(job.contents)
    bank = service.bank_ids(job)

    prepared = await service.prepare([*job.contents, *job.class_images], align)
    pc, pk = prepared[:n], prepared[n:]
    cc, kc = await asyncio.gather(service.content_codes(pc), service.class_codes(pk, bank))
    images = await service.generate(cc, kc)  # (n * m, H, W, C)

    content_labels = [p.label for p in pc]
    class_labels = job.class_labels(service.bundle, [p.label for p in pk])
    warnings = _warnings(prepared)
    as_json = len(images) > 1 or "application/json" in request.headers.get("accept", "")
    body = await service.off_loop(_transfer_body, service, images, pc, content_labels, class_labels, paste,
                                  warnings, as_json)
    headers = {"X-Lordkit-Warnings": "; ".join(warnings).encode("ascii", "replace").decode()} if warnings else None
    return Response(body, media_type="application/json" if as_json else "image/png", headers=headers)


def _transfer_body(service: Service, images, pc: list[PreparedInput], content_labels: list[str],
                   class_labels: list[str], paste: bool, warnings: list[str], as_json: bool) -> bytes:
    """PNG bytes (one pair) or the JSON document (runs on a preparation thread)."""
    from lordkit.runtime import to_uint8_image

    m = len(class_labels)
    out = []
    for p, img in enumerate(images):
        picture = to_uint8_image(img)
        if paste:
            picture = service.transfer.paste_back(pc[pair_of(p, m)[0]].prepared, picture)
        out.append((encode_png(picture), picture.shape))
    if not as_json:
        return out[0][0]
    images_json = []
    for p, (png, shape) in enumerate(out):
        i, j = pair_of(p, m)
        images_json.append({"content": i, "class": j, "name": result_name(content_labels[i], class_labels[j]),
                            "width": shape[1], "height": shape[0], "png": base64.b64encode(png).decode("ascii")})
    return _json({"contents": content_labels, "classes": class_labels, "warnings": warnings, "images": images_json})


def _codes_body(labels: list[str], codes, warnings: list[str]) -> bytes:
    # float32 -> float64 is exact and JSON writes float64 exactly: the client gets the same float32s back.
    return _json({"labels": labels, "dim": int(codes.shape[1]), "codes": codes.astype("float64").tolist(),
                  "warnings": warnings})


async def encode_content(service: Service, request: Request) -> Response:
    files, texts = await read_form(request, CONTENT_FIELDS, service.settings.max_pairs)
    contents = files.get("content", [])
    if not contents:
        raise BadInput("give at least one content image", hint=Hint.GIVE_CONTENT)
    _check_count(service, len(contents), "content images:")
    prepared = await service.prepare(contents, flag(texts, "align", True))
    codes = await service.content_codes(prepared)
    body = await service.off_loop(_codes_body, [p.label for p in prepared], codes, _warnings(prepared))
    return Response(body, media_type="application/json")


async def encode_class(service: Service, request: Request) -> Response:
    files, texts = await read_form(request, CLASS_FIELDS, service.settings.max_pairs)
    job = TransferJob(contents=[], class_images=files.get("class", []),
                      class_ids=parse_class_ids(texts.get("class_id", [])), class_names=texts.get("class_name", []))
    job.check_classes()
    _check_count(service, job.n_classes, "classes:")
    bank = service.bank_ids(job)
    prepared = await service.prepare(job.class_images, flag(texts, "align", True))
    codes = await service.class_codes(prepared, bank)
    labels = job.class_labels(service.bundle, [p.label for p in prepared])
    body = await service.off_loop(_codes_body, labels, codes, _warnings(prepared))
    return Response(body, media_type="application/json")


async def classes(service: Service, request: Request) -> Response:
    names = service.bundle.class_names
    return JSONResponse({"classes": [{"id": i, "name": name} for i, name in enumerate(names)]})


async def model(service: Service, request: Request) -> Response:
    return JSONResponse(service.describe())


async def healthz(service: Service, request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def readyz(service: Service, request: Request) -> Response:
    if service.closing:
        return error(503, "shutting down", {"Retry-After": str(RETRY_AFTER_S)})
    if service.full:
        return error(503, f"queue full ({service.in_flight} of {service.settings.queue} requests)",
                     {"Retry-After": str(RETRY_AFTER_S)})
    return JSONResponse({"status": "ready", "queue_depth": service.in_flight, "queue_limit": service.settings.queue})


async def metrics(service: Service, request: Request) -> Response:
    return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)


HANDLERS: dict[str, Handler] = {"transfer": transfer, "encode_content": encode_content, "encode_class": encode_class,
                                "classes": classes, "model": model, "healthz": healthz, "readyz": readyz,
                                "metrics": metrics}


# -- wiring --------------------------------------------------------------------------------------


def _endpoint(service: Service, handler: Handler, admit: bool):
    """A Starlette endpoint: admission and body limit (POST routes), timeout, and errors as JSON lines."""
    settings = service.settings

    async def endpoint(request: Request) -> Response:
        if admit:
            if service.closing:
                return error(503, "the server is shutting down", {"Retry-After": str(RETRY_AFTER_S)})
            if service.full:
                return error(503, f"queue full ({service.in_flight} of {settings.queue} requests in flight); "
                                  "retry shortly", {"Retry-After": str(RETRY_AFTER_S)})
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > settings.max_body_bytes:
                return error(413, f"request body is {int(length) / 2 ** 20:.1f} MB, above this server's "
                                  f"{settings.max_body_mb:g} MB limit (--max-body-mb)")
            request = Request(request.scope, _limited(request.receive, settings.max_body_bytes))
            service.in_flight += 1
        try:
            return await asyncio.wait_for(handler(service, request), settings.timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"the request took longer than {settings.timeout_s:g} s (--timeout-s)")
        except Problem as p:
            return error(p.status, p.message, p.headers)
        except LordkitError as e:  # by its type (lordkit.serve.service.HTTP_STATUS), never its text
            p = problem(e)
            return error(p.status, p.message)
        except BodyTooLarge:
            return error(413, f"request body is above this server's {settings.max_body_mb:g} MB limit (--max-body-mb)")
        except HTTPException as e:  # Starlette's multipart parser: a malformed form
            return error(e.status_code, f"malformed multipart form: {e.detail}")
        finally:
            if admit:
                service.in_flight -= 1

    endpoint.__name__ = handler.__name__
    return endpoint


class MetricsMiddleware:
    """Counts every HTTP request by route template (or "other"), method and status, with its duration."""

    METHODS = {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"}

    def __init__(self, app, service: Service, paths: set[str]):
        self.app, self.service, self.paths = app, service, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in self.paths else "other"
            method = scope["method"] if scope["method"] in self.METHODS else "other"
            self.service.metrics.request(route, method, status, time.perf_counter() - t0)


async def _not_found(request: Request, exc: HTTPException) -> Response:
    return error(404, f"no route {request.method} {request.url.path}; the API is listed at /docs")


async def _not_allowed(request: Request, exc: HTTPException) -> Response:
    return error(405, f"{request.url.path} does not take {request.method}", dict(exc.headers or {}))


async def _internal(request: Request, exc: Exception) -> Response:
    return error(500, "internal error; see the server log")


def create_app(service: Service) -> Starlette:
    """The ASGI app serving `service` (a loaded model); closing the app's lifespan closes the service."""
    spec = openapi("lordkit serve", lordkit.__version__,
                   f"Class/content transfer with the lordkit export {service.bundle.model_name!r} "
                   f"({service.bundle.img_size} px, {service.bundle.n_classes} classes).")
    spec_body = json.dumps(spec, indent=1).encode()
    page = docs_page(spec)

    async def openapi_json(request: Request) -> Response:
        return Response(spec_body, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(page)

    routes = []
    for r in ROUTES:
        if r.name == "openapi":
            endpoint = openapi_json
        elif r.name == "docs":
            endpoint = docs
        else:
            endpoint = _endpoint(service, HANDLERS[r.name], admit=r.method == "POST")
        routes.append(Route(r.path, endpoint, methods=[r.method], name=r.name))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has stopped accepting and every open request has been answered by now.
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(MetricsMiddleware, service=service, paths={r.path for r in ROUTES})],
                    exception_handlers={404: _not_found, 405: _not_allowed, Exception: _internal})
    app.state.service = service
    return app


def configure_logging() -> None:
    """lordkit.serve's own lines (warnings, failed batches) on stderr, in uvicorn's style."""
    logger = logging.getLogger("lordkit.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def app_from_env() -> Starlette:
    """The app factory of each worker process (`lordkit serve --workers N`): settings from the environment."""
    configure_logging()
    try:
        service = Service(Settings.from_env())
    except LordkitError as e:
        log.error("%s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise SystemExit(3) from None
    return create_app(service)


__all__ = ["create_app", "app_from_env", "configure_logging", "read_form", "error"]
