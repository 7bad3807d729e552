"""`lordkit serve`: class/content transfer over HTTP, with dynamic batching, on the torch-free runtime.

    settings.py   Settings: every option, checked before anything slow starts
    batcher.py    Batcher: rows of concurrent requests share one onnxruntime call per network
    service.py    Service: the loaded export, image preparation threads, the batcher
    app.py        the Starlette app: routes, admission (queue), limits, errors as one JSON line
    openapi.py    the API as OpenAPI 3.1 (/openapi.json) and an HTML page (/docs)
    metrics.py    Prometheus text format (/metrics)
    server.py     serve(settings): bind, load, run uvicorn (one process or N workers), drain

Needs the `serve` extra (Starlette, uvicorn, python-multipart); nothing here imports torch.
Importing this package imports none of them: the batcher and the settings work without the extra.
See docs/serve.md.
"""

from lordkit.serve.settings import Settings

__all__ = ["Settings"]
