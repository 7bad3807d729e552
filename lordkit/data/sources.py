"""What a dataset reader hands to the preprocessing pipeline, and the registry of readers.

A reader turns a dataset's official files into a `Source`: the sorted class names and a list of
`Chunk`s. Each chunk is one unit of decoding work (an image file, a video, a slice of a big array)
whose `load` returns the images (RGB or grey, any size) and their labels. The pipeline runs chunks
in parallel, makes images square and resizes them, and streams them into the store. A chunk that
cannot be decoded raises `DecodeError`: it is skipped and counted; anything structurally wrong
(a missing or truncated archive) raises LordkitError and stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lordkit.errors import LordkitError


class DecodeError(Exception):
    """One image (or video) could not be decoded; the pipeline skips and counts it."""


@dataclass
class Loaded:
    # A 4-D (n, h, w, c) uint8 stack, a list of (h, w[, c]) images, or one (h, w[, c]) image.
    images: np.ndarray | list[np.ndarray]
    class_ids: np.ndarray | int  # (n,) or one id for all
    content_ids: np.ndarray | int = -1  # (n,) or one id for all; -1 = no content label
    per_image: dict[str, np.ndarray | int] = field(default_factory=dict)  # extra int labels per image
    info: Any = None  # passed to Source.finalize (e.g. landmarks of a face crop)


@dataclass
class Chunk:
    name: str  # file (or file:range) named in messages
    n_expected: int  # images it should yield: drives the progress bar and the 1% failure rule
    load: Callable[[], Loaded]


@dataclass
class Source:
    class_names: list[str]  # sorted; index = class id
    channels: int  # 1 or 3: images are converted to this
    chunks: Sequence[Chunk]
    content_factors: list[str] = field(default_factory=list)
    square: str = "center"  # how non-square images become square: "center" crop or "stretch"
    face_template: list[list[float]] | None = None  # (x, y) in [0, 1] of the final crop
    extra: dict[str, Any] = field(default_factory=dict)
    finalize: Callable[[list[Any]], dict[str, Any]] | None = None  # infos -> metadata updates


class Options:
    """Dataset-specific `--opt key=value` settings; every key must be read, so typos are caught."""

    def __init__(self, raw: dict[str, str] | None = None):
        self.raw = dict(raw or {})
        self.used: set[str] = set()

    @classmethod
    def parse(cls, items: Sequence[str]) -> "Options":
        raw: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise LordkitError(f"--opt expects KEY=VALUE, got {item!r}")
            raw[key.strip()] = value.strip()
        return cls(raw)

    def get(self, key: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
        self.used.add(key)
        if key not in self.raw:
            return default
        try:
            return cast(self.raw[key])
        except (TypeError, ValueError):
            raise LordkitError(f"--opt {key}={self.raw[key]!r}: expected {getattr(cast, '__name__', cast)}") from None

    def check_all_used(self, dataset_id: str) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used)) or "none"
            raise LordkitError(f"unknown --opt for {dataset_id}: {', '.join(unknown)} (known: {known})")


@dataclass
class ReaderSpec:
    id: str
    summary: str  # one line for --help and the README
    open: Callable[[Path | None, Options], Source]
    needs_path: bool = True
    is_face: bool = False


READERS: dict[str, ReaderSpec] = {}


def register(id: str, summary: str, needs_path: bool = True, is_face: bool = False):
    """Decorator: `@register("mnist", "...")` on a function (path, opts) -> Source."""

    def wrap(fn: Callable[[Path | None, Options], Source]):
        READERS[id] = ReaderSpec(id=id, summary=summary, open=fn, needs_path=needs_path, is_face=is_face)
        return fn

    return wrap


def dataset_ids() -> list[str]:
    """Every dataset id a reader is registered for, sorted."""
    from lordkit.data import datasets  # noqa: F401  (registers every reader)

    return sorted(READERS)


def get_reader(dataset_id: str) -> ReaderSpec:
    from lordkit.data import datasets  # noqa: F401  (registers every reader)

    if dataset_id not in READERS:
        raise LordkitError(f"unknown dataset id {dataset_id!r}; supported: {', '.join(sorted(READERS))}")
    return READERS[dataset_id]


def sorted_class_map(names: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Class ids by sorted name: stable across runs and machines (no hash-seed dependence)."""
    ordered = sorted(set(names))
    return ordered, {name: i for i, name in enumerate(ordered)}


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise LordkitError(f"{what} not found: {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LordkitError(f"{what} not found: {path}")
    return path
