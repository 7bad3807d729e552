"""A small client for `lordkit serve`, on the standard library's urllib (no torch, no extra package).

    from lordkit.client import Client
    c = Client("http://127.0.0.1:8000")
    out = c.transfer(["a.jpg", "b.jpg"], class_name="00012")   # (2, 1, H, W, 3) uint8
    out = c.transfer("a.jpg", class_image="ref.jpg", class_id=[3, 4])  # (1, 3, H, W, 3): image, then ids
    codes = c.encode_content(["a.jpg"])                         # (1, content_dim) float32
    c.classes()                                                 # ["00001", "00002", ...]; index = class id

Images are file paths, encoded bytes (PNG, JPEG, ...) or uint8 RGB / grey arrays (sent as PNG).
Results are RGB uint8 arrays, as the server writes them (also for grey models). A refused request
raises `ServerError` with the HTTP status and the server's one-line message; `retry_after` is set
on 503 (queue full).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

ImageArg = Any  # a path (str / Path), encoded bytes, or an (H, W[, C]) uint8 array


class ServerError(Exception):
    """The server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message, self.retry_after = status, message, retry_after


def _list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _png(img: np.ndarray) -> bytes:
    import cv2

    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"arrays must be uint8 images, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise ValueError(f"cannot encode an array of shape {img.shape} as PNG")
    return buf.tobytes()


def _file(item: ImageArg, k: int) -> tuple[str, bytes]:
    """(file name, bytes) of an image argument."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        return path.name, path.read_bytes()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"image{k}", bytes(item)
    if isinstance(item, np.ndarray):
        return f"image{k}.png", _png(item)
    raise TypeError(f"an image is a path, bytes or a uint8 array, got {type(item).__name__}")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes from the server -> (H, W, 3) uint8 RGB."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ServerError(0, "the server sent an image that does not decode")
    return np.ascontiguousarray(img[..., ::-1])


class Client:
    """Calls a `lordkit serve` server at `url` (e.g. http://127.0.0.1:8000); timeout in seconds per call."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = float(timeout)

    # -- HTTP -----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            data = e.read()
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                message = data.decode("utf-8", "replace").strip() or e.reason
            retry = e.headers.get("Retry-After")
            raise ServerError(e.code, message, float(retry) if retry and retry.isdigit() else None) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(0, f"cannot reach {self.url}: {reason}") from None

    def _get_json(self, path: str) -> Any:
        return json.loads(self._request("GET", path)[2])

    def _post_form(self, path: str, files: Iterable[tuple[str, ImageArg]], fields: Iterable[tuple[str, str]],
                   accept: str = "application/json") -> bytes:
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for k, (name, item) in enumerate(files):
            filename, data = _file(item, k)
            filename = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        for name, value in fields:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": accept}
        return self._request("POST", path, body, headers)[2]

    # -- the API --------------------------------------------------------------------------------

    def transfer(self, contents: ImageArg | Sequence[ImageArg], class_id: int | Sequence[int] | None = None,
                 class_name: str | Sequence[str] | None = None,
                 class_image: ImageArg | Sequence[ImageArg] | None = None, *, paste_back: bool = False,
                 align: bool = True) -> np.ndarray | list[list[np.ndarray]]:
        """Each content image drawn in each class: (N, M, H, W, 3) uint8, out[i, j] = content i in class j.

        Classes are ordered class images first, then ids, then names. paste_back=True (face models)
        returns the whole photos instead, as a list (per content) of lists (per class) of arrays,
        since photos differ in size.
        """
        contents = contents if isinstance(contents, (list, tuple)) else [contents]
        files = [("content", c) for c in contents] + [("class", c) for c in _list(class_image)]
        fields = [("class_id", str(int(i))) for i in _list(class_id)]
        fields += [("class_name", str(n)) for n in _list(class_name)]
        fields += [("paste_back", "true" if paste_back else "false"), ("align", "true" if align else "false")]
        doc = json.loads(self._post_form("/v1/transfer", files, fields))
        n, m = len(doc["contents"]), len(doc["classes"])
        pictures = [decode_png(base64.b64decode(item["png"])) for item in doc["images"]]
        if paste_back:
            return [[pictures[i * m + j] for j in range(m)] for i in range(n)]
        return np.stack(pictures).reshape(n, m, *pictures[0].shape)

    def encode_content(self, images: ImageArg | Sequence[ImageArg], *, align: bool = True) -> np.ndarray:
        """(N, content_dim) float32 content codes."""
        images = images if isinstance(images, (list, tuple)) else [images]
        doc = json.loads(self._post_form("/v1/encode/content", [("content", c) for c in images],
                                         [("align", "true" if align else "false")]))
        return np.asarray(doc["codes"], np.float32).reshape(len(images), doc["dim"])

    def encode_class(self, images: ImageArg | Sequence[ImageArg] | None = None,
                     class_id: int | Sequence[int] | None = None, class_name: str | Sequence[str] | None = None,
                     *, align: bool = True) -> np.ndarray:
        """(M, class_dim) float32 class codes: images (class encoder) first, then ids, then names (class bank)."""
        fields = [("class_id", str(int(i))) for i in _list(class_id)]
        fields += [("class_name", str(n)) for n in _list(class_name)] + [("align", "true" if align else "false")]
        doc = json.loads(self._post_form("/v1/encode/class", [("class", c) for c in _list(images)], fields))
        return np.asarray(doc["codes"], np.float32).reshape(len(doc["labels"]), doc["dim"])

    def classes(self) -> list[str]:
        """The class names of the training set; a name's index is its class id."""
        items = self._get_json("/v1/classes")["classes"]
        return [c["name"] for c in sorted(items, key=lambda c: c["id"])]

    def model(self) -> dict:
        """The export's sizes and the server's limits (GET /v1/model)."""
        return self._get_json("/v1/model")

    def health(self) -> dict:
        """{"alive": bool, "ready": bool, "detail": str}: /healthz and /readyz, never raising for a down server."""
        try:
            self._request("GET", "/healthz")
        except ServerError as e:
            return {"alive": False, "ready": False, "detail": e.message}
        try:
            doc = self._get_json("/readyz")
            return {"alive": True, "ready": True, "detail": f"queue {doc['queue_depth']} of {doc['queue_limit']}"}
        except ServerError as e:
            return {"alive": True, "ready": False, "detail": e.message}


__all__ = ["Client", "ServerError", "decode_png"]
