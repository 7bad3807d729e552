"""ONNX file metadata (metadata_props), shared by the exporter and the int8 quantizer; no torch."""

from __future__ import annotations

from pathlib import Path


def write_metadata(path: Path, props: dict[str, str]) -> None:
    """Replace the metadata_props of the ONNX file at path with props, in place."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
