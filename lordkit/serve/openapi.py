"""The HTTP API as an OpenAPI 3.1 document (GET /openapi.json) and a self-contained HTML page (GET /docs).

The document is written here by hand, one entry per route; lordkit.serve.app builds its routes from
the same table (`ROUTES`), so a route cannot exist without its documentation, and
tests/test_serve.py checks the served document against the served routes.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, retry_after: bool = False) -> dict:
    out = _json(ERROR, description)
    if retry_after:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait before trying again.",
                                          "schema": {"type": "integer"}}}
    return out


def _form(properties: dict[str, dict], required: list[str]) -> dict:
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": required},
        "encoding": {name: {"contentType": "image/*"} for name, p in properties.items()
                     if p.get("items", p).get("format") == "binary"}}}}


FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
BOOL = {"type": "boolean"}
CODES = {"type": "object", "required": ["labels", "codes", "dim"], "properties": {
    "labels": {"type": "array", "items": {"type": "string"}},
    "codes": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
              "description": "One row per input, float32 values written exactly."},
    "dim": {"type": "integer"},
    "warnings": {"type": "array", "items": {"type": "string"}}}}
INPUT_ERRORS = {
    "400": _error("A bad request: not an image, an image smaller than the model's input, a missing or "
                  "unknown field, class_id not an integer, paste_back with a non-face model."),
    "413": _error("The body is above --max-body-mb, an image above --max-image-mp, or more pairs or "
                  "images than --max-pairs."),
    "415": _error("The body is not multipart/form-data."),
    "422": _error("Well-formed but impossible: an unknown class id or name, no face found in a photo."),
    "503": _error("The queue is full (--queue) or the server is shutting down.", retry_after=True),
    "504": _error("The request took longer than --timeout-s."),
}
CONTENT_FIELD = {**FILES, "description": "Content image(s): the pose, expression, layout... kept. Repeatable."}
ALIGN_FIELD = {**BOOL, "default": True,
               "description": "Face models: align the largest face (false: the images are aligned crops)."}
CLASS_FIELDS = {
    "class": {**FILES, "description": "Class reference image(s), encoded by the class encoder. Repeatable."},
    "class_id": {"type": "array", "items": {"type": "integer"},
                 "description": "Class id(s) of the training set (row of the class bank). Repeatable."},
    "class_name": {"type": "array", "items": {"type": "string"},
                   "description": "Class name(s) of the training set. Repeatable."},
}


@dataclass(frozen=True)
class RouteDoc:
    method: str
    path: str
    name: str  # the endpoint's function in lordkit.serve.app
    summary: str
    description: str = ""
    request: dict | None = None
    responses: dict[str, Any] = field(default_factory=dict)


ROUTES: tuple[RouteDoc, ...] = (
    RouteDoc("POST", "/v1/transfer", "transfer", "Draw each content image in each class",
             "N content images x M classes (class images first, then class_id, then class_name, each in "
             "form order). One pair answers image/png unless the Accept header asks for application/json; "
             "several pairs answer JSON with base64 PNGs. Face models align the largest face of each "
             "photo; paste_back=true answers the whole photo with the generated face blended in.",
             _form({"content": CONTENT_FIELD, **CLASS_FIELDS, "paste_back": {
                 **BOOL, "default": False, "description": "Face models: the generated face pasted back into the photo."},
                 "align": ALIGN_FIELD}, ["content"]),
             {"200": {"description": "The image (one pair), or every pair as JSON.", "content": {
                 "image/png": {"schema": {"type": "string", "format": "binary"}},
                 "application/json": {"schema": {"$ref": "#/components/schemas/Transfer"}}},
                 "headers": {"X-Lordkit-Warnings": {"description": "Conversions made to the inputs, '; '-separated.",
                                                    "schema": {"type": "string"}}}},
              **INPUT_ERRORS}),
    RouteDoc("POST", "/v1/encode/content", "encode_content", "Content codes of images",
             "Runs the content encoder once per image (aligned first for face models).",
             _form({"content": CONTENT_FIELD, "align": ALIGN_FIELD}, ["content"]),
             {"200": _json(CODES, "(N, content_dim) codes."), **INPUT_ERRORS}),
    RouteDoc("POST", "/v1/encode/class", "encode_class", "Class codes of images, ids or names",
             "Class images go through the class encoder; class ids and names are rows of the export's "
             "class bank. Codes come back in the order: images, ids, names.",
             _form({**CLASS_FIELDS, "align": ALIGN_FIELD}, []),
             {"200": _json(CODES, "(M, class_dim) codes."), **INPUT_ERRORS}),
    RouteDoc("GET", "/v1/classes", "classes", "The classes of the training set",
             responses={"200": _json({"type": "object", "properties": {
                 "classes": {"type": "array", "items": {"type": "object", "properties": {
                     "id": {"type": "integer"}, "name": {"type": "string"}}}}}}, "Class ids and names.")}),
    RouteDoc("GET", "/v1/model", "model", "What the server runs",
             responses={"200": _json({"type": "object", "properties": {
                 "model_name": {"type": "string"}, "img_size": {"type": "integer"}, "channels": {"type": "integer"},
                 "content_dim": {"type": "integer"}, "class_dim": {"type": "integer"},
                 "n_classes": {"type": "integer"}, "face": {"type": "boolean"}, "device": {"type": "string"},
                 "max_batch": {"type": "integer"}, "max_pairs": {"type": "integer"}}},
                 "The export's sizes and the server's limits.")}),
    RouteDoc("GET", "/healthz", "healthz", "Liveness: the process answers",
             responses={"200": _json({"type": "object", "properties": {"status": {"const": "alive"}}}, "Alive.")}),
    RouteDoc("GET", "/readyz", "readyz", "Readiness: the model is loaded and the queue is not full",
             responses={"200": _json({"type": "object", "properties": {
                 "status": {"const": "ready"}, "queue_depth": {"type": "integer"},
                 "queue_limit": {"type": "integer"}}}, "Ready for traffic."),
                 "503": _error("Not ready: queue full or shutting down.", retry_after=True)}),
    RouteDoc("GET", "/metrics", "metrics", "Prometheus metrics",
             "Requests by route and status, latency histograms, batch sizes per network, queue depth.",
             responses={"200": {"description": "Prometheus text format 0.0.4.",
                                "content": {"text/plain": {"schema": {"type": "string"}}}}}),
    RouteDoc("GET", "/openapi.json", "openapi", "This API as OpenAPI 3.1",
             responses={"200": _json({"type": "object"}, "The OpenAPI document.")}),
    RouteDoc("GET", "/docs", "docs", "This API as an HTML page",
             responses={"200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}}),
)

SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Transfer": {"type": "object", "required": ["contents", "classes", "images"], "properties": {
        "contents": {"type": "array", "items": {"type": "string"}, "description": "Content labels (file stems)."},
        "classes": {"type": "array", "items": {"type": "string"},
                    "description": "Class labels: file stems, then class names of ids and names."},
        "images": {"type": "array", "items": {"type": "object", "properties": {
            "content": {"type": "integer"}, "class": {"type": "integer"}, "name": {"type": "string"},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "png": {"type": "string", "contentEncoding": "base64"}}},
            "description": "Content-major: pair k is content k // M in class k % M."},
        "warnings": {"type": "array", "items": {"type": "string"}}}},
}


def openapi(title: str, version: str, description: str = "") -> dict:
    paths: dict[str, dict] = {}
    for r in ROUTES:
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary, "responses": r.responses}
        if r.description:
            op["description"] = r.description
        if r.request is not None:
            op["requestBody"] = r.request
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {"openapi": "3.1.0", "info": {"title": title, "version": version, "description": description},
            "paths": paths, "components": {"schemas": SCHEMAS}}


def docs_page(spec: dict) -> str:
    """One HTML page listing every route, its form fields and its responses (no scripts, no CDN)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(spec['info']['title'])}</title>",
             "<style>body{font:15px/1.45 sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "code,pre{background:#f4f4f4;padding:0 .2em}h2{margin-top:2em;border-top:1px solid #ccc;"
             "padding-top:1em}td,th{text-align:left;padding:.15em .6em;vertical-align:top}</style></head><body>",
             f"<h1>{e(spec['info']['title'])} <small>{e(spec['info']['version'])}</small></h1>",
             f"<p>{e(spec['info'].get('description', ''))}</p>",
             "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Errors are "
             "<code>{\"error\": \"one line\"}</code>.</p>"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h2><code>{method.upper()} {e(path)}</code></h2><p><b>{e(op['summary'])}</b></p>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            body = op.get("requestBody")
            if body:
                schema = body["content"]["multipart/form-data"]["schema"]
                parts.append("<p>multipart/form-data fields:</p><table>")
                for name, prop in schema["properties"].items():
                    kind = prop.get("items", prop)
                    kind = "file" if kind.get("format") == "binary" else kind.get("type", "")
                    repeat = " (repeatable)" if prop.get("type") == "array" else ""
                    req = " required" if name in schema.get("required", []) else ""
                    parts.append(f"<tr><td><code>{e(name)}</code></td><td>{e(kind + repeat + req)}</td>"
                                 f"<td>{e(prop.get('description', ''))}</td></tr>")
                parts.append("</table>")
            parts.append("<table>")
            for status, resp in op["responses"].items():
                kinds = ", ".join(resp.get("content", {}))
                parts.append(f"<tr><td>{e(status)}</td><td>{e(kinds)}</td><td>{e(resp['description'])}</td></tr>")
            parts.append("</table>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f"<h3>{e(name)}</h3><pre>{e(json.dumps(schema, indent=1))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["ROUTES", "RouteDoc", "openapi", "docs_page"]
