"""Shared test helpers: a tiny untrained model dir in the real on-disk format, and its export.

Used by the export tests and the runtime tests (import as `from factories import ...`; pytest puts
tests/ on sys.path). Nothing is trained: weights are the models' random initialisation, seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

TINY_MODEL = dict(content_dim=8, class_dim=8, n_adain_layers=2, adain_dim=16, gen_last_dim=8,
                  enc_conv_dims=(8, 16, 16), enc_fc_dim=32)
N_IMGS = 12  # rows of the (unused) content table; small keeps the latent file tiny


def make_model_dir(path: str | Path, img_size: int = 32, channels: int = 3, n_classes: int = 3,
                   class_names: Sequence[str] | None = None,
                   face_template: Sequence[Sequence[float]] | None = None, seed: int = 0) -> Path:
    """Write a model dir (config.json, data.json, latent + amortized safetensors) with a tiny config.

    n_adain_layers grows with img_size so the generator starts at 8 px at most (a config rule).
    """
    import torch

    from lordkit.config import LordConfig, ModelConfig
    from lordkit.fsutil import atomic_write_json
    from lordkit.models import LatentModel, amortized_from_latent
    from lordkit.training import save_weights, weights_path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    names = list(class_names) if class_names is not None else [f"class{i:02d}" for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names for n_classes={n_classes}")
    n_adain_layers = max(TINY_MODEL["n_adain_layers"], img_size.bit_length() - 4)
    model_cfg = ModelConfig(**{**TINY_MODEL, "n_adain_layers": n_adain_layers}, img_size=img_size,
                            channels=channels, n_imgs=N_IMGS, n_classes=n_classes)
    cfg = LordConfig(model=model_cfg)

    # Seed a private RNG stream so callers' global torch RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        latent = LatentModel(model_cfg)
        amortized = amortized_from_latent(latent, model_cfg)
        # Spread the class table beyond init's +-0.05 so class codes visibly differ in tests.
        with torch.no_grad():
            latent.class_embedding.weight.uniform_(-1.0, 1.0)

    cfg.save(path / "config.json")
    atomic_write_json(path / "data.json", {
        "data_name": "tiny", "dataset_id": "celeba" if face_template is not None else "synthetic",
        "n_imgs": N_IMGS, "n_classes": n_classes, "class_names": names, "img_size": img_size,
        "channels": channels, "content_factors": [],
        "face_template": [list(map(float, p)) for p in face_template] if face_template is not None else None,
        "content_grid": None, "path": str(path / "no-data"),
    })
    save_weights(latent, weights_path(path, "latent"))
    save_weights(amortized, weights_path(path, "amortized"))
    return path


def make_export(model_dir: str | Path, out_dir: str | Path, **kw: Any) -> Path:
    """Export `model_dir` to `out_dir` with lordkit.export.exporter.export_model; returns out_dir.

    Keyword arguments go to export_model (onnx, torchscript, fp16, opset, force, batch_sizes);
    the parity table is not printed unless show=True is passed.
    """
    from lordkit.export.exporter import export_model

    kw.setdefault("show", False)
    export_model(Path(model_dir), Path(out_dir), **kw)
    return Path(out_dir)
