"""Shared test helpers: a tiny untrained model dir in the real on-disk format, and its export.

Used by the export tests and the runtime tests (import as `from factories import ...`; pytest puts
tests/ on sys.path). Nothing is trained: weights are the models' random initialisation, seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

N_IMGS = 12  # rows of the (unused) content table; small keeps the latent file tiny


def make_model_dir(path: str | Path, img_size: int = 32, channels: int = 3, n_classes: int = 3,
                   class_names: Sequence[str] | None = None,
                   face_template: Sequence[Sequence[float]] | None = None, seed: int = 0,
                   **model_fields: Any) -> Path:
    """Write a model dir (config.json, data.json, latent + amortized safetensors) with a tiny config.

    n_adain_layers grows with img_size so the generator starts at 8 px at most (a config rule).
    An existing dir at `path` is replaced. model_fields: other ModelConfig fields (output_margin=0.1).
    """
    from lordkit.config import LordConfig, tiny_model
    from lordkit.modeldir import write_random_model

    names = list(class_names) if class_names is not None else [f"class{i:02d}" for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names for n_classes={n_classes}")
    cfg = LordConfig(model=tiny_model(img_size, channels, n_imgs=N_IMGS, n_classes=n_classes, **model_fields))
    data = {"data_name": "tiny", "dataset_id": "celeba" if face_template is not None else "synthetic",
            "n_imgs": N_IMGS, "n_classes": n_classes, "class_names": names, "img_size": img_size,
            "channels": channels, "content_factors": [],
            "face_template": [list(map(float, p)) for p in face_template] if face_template is not None else None,
            "content_grid": None, "path": str(Path(path) / "no-data")}
    # The class table is spread beyond init's +-0.05 so class codes visibly differ in tests.
    return write_random_model(Path(path), cfg, seed=seed, class_code_range=1.0, data=data, force=True)


def make_export(model_dir: str | Path, out_dir: str | Path, **kw: Any) -> Path:
    """Export `model_dir` to `out_dir` with lordkit.export.exporter.export_model; returns out_dir.

    Keyword arguments go to export_model (onnx, torchscript, fp16, opset, force, batch_sizes);
    the parity table is not printed unless show=True is passed.
    """
    from lordkit.export.exporter import export_model

    kw.setdefault("show", False)
    export_model(Path(model_dir), Path(out_dir), **kw)
    return Path(out_dir)
