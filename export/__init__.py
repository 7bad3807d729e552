"""Exporters to TorchScript and ONNX and their verification (installed as lordkit.export)."""
