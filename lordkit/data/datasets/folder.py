"""Any folder of class-named subfolders of images: class = subfolder name, no content labels."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from lordkit.data.imageio import is_image_file, read_image
from lordkit.data.sources import Chunk, Loaded, Options, Source, register, require_dir, sorted_class_map
from lordkit.errors import LordkitError


def _load(path: Path, class_id: int, grey: bool) -> Loaded:
    return Loaded(images=read_image(path, grey=grey), class_ids=class_id)


@register("folder", "any folder of class-named subfolders of images (class = subfolder)")
def open_folder(path: Path, opts: Options) -> Source:
    grey = opts.get("grey", False, lambda s: s.lower() in ("1", "true", "yes"))
    require_dir(path, "image folder")
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise LordkitError(f"{path} has no class subfolders (expected {path}/<class name>/<image files>)")
    names, ids = sorted_class_map(p.name for p in subdirs)
    chunks = []
    for sub in subdirs:
        files = sorted(f for f in sub.rglob("*") if is_image_file(f))
        if not files:
            raise LordkitError(f"class folder {sub} has no images")
        chunks += [Chunk(str(f), 1, partial(_load, f, ids[sub.name], grey)) for f in files]
    return Source(class_names=names, channels=1 if grey else 3, chunks=chunks)
