"""Cars3D (Reed et al. 2015) from its per-car .mat files: class = car model, content = viewpoint.

Each car_XXX_mesh.mat holds `im`, (H, W, 3, 24 azimuths, 4 elevations) uint8. Content id is
elevation * 24 + azimuth, so the 96 viewpoints of every car share ids.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lordkit.data.sources import Chunk, DecodeError, Loaded, Options, Source, register, sorted_class_map
from lordkit.errors import LordkitError

N_AZIMUTHS, N_ELEVATIONS = 24, 4


def _import_scipy_io() -> Any:
    try:
        import scipy.io  # only needed for this format; part of the `train` extra
    except ImportError:
        raise LordkitError("reading Cars3D needs scipy: pip install 'lordkit[train]'") from None
    return scipy.io


def _find_folder(path: Path) -> Path:
    # Accept the cars/ folder itself, its parent, or the root of the unpacked archive (data/cars).
    for folder in (path, path / "cars", path / "data" / "cars"):
        if folder.is_dir() and any(_mat_files(folder)):
            return folder
    raise LordkitError(f"no Cars3D files in {path}: expected the cars/ folder of per-car .mat files "
                       "(car_001_mesh.mat, ...) or a folder containing it")


def _mat_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mat") if p.is_file() and not p.name.startswith("."))


def _load(sio: Any, path: Path, class_id: int) -> Loaded:
    try:
        mat = sio.loadmat(str(path), variable_names=["im"])
    except Exception as e:  # scipy raises many types (MatReadError, ValueError, OSError, ...) for bad files
        raise DecodeError(f"{path.name} is not a readable MATLAB file: {e}") from None
    im = mat.get("im")
    if im is None:
        raise DecodeError(f"{path.name} has no variable 'im' (expected Cars3D renders)")
    if im.dtype != np.uint8 or im.ndim != 5 or im.shape[2:] != (3, N_AZIMUTHS, N_ELEVATIONS):
        raise DecodeError(f"{path.name}: 'im' must be uint8 (H, W, 3, {N_AZIMUTHS}, {N_ELEVATIONS}), "
                          f"found {im.dtype} {im.shape}")
    images = im.transpose(4, 3, 0, 1, 2).reshape(-1, *im.shape[:3])  # (elevation * 24 + azimuth, H, W, 3)
    return Loaded(images=images, class_ids=class_id, content_ids=np.arange(N_ELEVATIONS * N_AZIMUTHS))


@register("cars3d", "Cars3D renders from the per-car .mat files (class = car model, content = elevation x azimuth)")
def open_cars3d(path: Path, opts: Options) -> Source:
    if not path.is_dir():
        raise LordkitError(f"Cars3D folder not found: {path} (expected the cars/ folder of .mat files)")
    folder = _find_folder(path)
    sio = _import_scipy_io()
    files = _mat_files(folder)
    names, ids = sorted_class_map(p.stem for p in files)
    chunks = [Chunk(str(p), N_ELEVATIONS * N_AZIMUTHS, partial(_load, sio, p, ids[p.stem])) for p in files]
    return Source(class_names=names, channels=3, chunks=chunks, content_factors=["elevation", "azimuth"],
                  extra={"content_grid": {"elevation": N_ELEVATIONS, "azimuth": N_AZIMUTHS}})
