"""The embedded default dataset: 2-D shapes drawn with OpenCV, generated deterministically, no download.

class = shape; content = (x, y, scale, rotation, hue), every combination on a grid. With
`--opt colour=class` each shape has its own hue instead (a class attribute, as colour is for the
cars and chairs of LORD's datasets) and content is (x, y, scale, rotation). Because any
(class, content) pair can be rendered, content transfer can be scored against the true image:
`render_truth(class_id, content_id, img_size, grid)` draws exactly what the store would hold.
"""

from __future__ import annotations

import colorsys
from functools import partial
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from lordkit.data.sources import Chunk, Loaded, Options, Source, register
from lordkit.errors import LordkitError

SHAPES = ("circle", "cross", "square", "star", "triangle")  # sorted: index = class id
FACTORS = ("x", "y", "scale", "rotation", "hue")
DEFAULT_GRID = {"x": 4, "y": 4, "scale": 3, "rotation": 4, "hue": 4}
CANVAS = 128  # drawn at this size with anti-aliasing, then resized by the pipeline like any dataset
_SUPERSAMPLE = 4  # drawn 4x larger and area-downsampled: smooth, platform-independent edges


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of a shape of circumradius 1 centred at the origin, (K, 2)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a, b = 1.0 / np.sqrt(2), 0.3
        pts = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b),
               (-b, b), (-b, a)]
        return np.array(pts, dtype=np.float64)
    raise ValueError(f"unknown shape {shape!r}")


def factor_values(grid: dict[str, int]) -> dict[str, np.ndarray]:
    """The value of each factor level: positions and scales as fractions of the image, angles in degrees."""
    def lin(lo: float, hi: float, n: int) -> np.ndarray:
        return np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])

    return {
        "x": lin(0.33, 0.67, grid["x"]),
        "y": lin(0.33, 0.67, grid["y"]),
        "scale": lin(0.17, 0.3, grid["scale"]),  # circumradius / image size: shapes stay inside
        "rotation": np.arange(grid["rotation"]) * (45.0 / max(grid["rotation"], 1)),  # 0..45 degrees
        "hue": np.arange(grid["hue"]) / grid["hue"],
    }


def content_factors_of(content_id: int, grid: dict[str, int]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(content_id, [grid[f] for f in FACTORS]))


def class_hue(shape: str) -> float:
    """The hue of a shape when colour is a class attribute: fixed per shape name."""
    return SHAPES.index(shape) / len(SHAPES)


def render(shape_id: int, content_id: int, grid: dict[str, int], shapes: Sequence[str] = SHAPES,
           size: int = CANVAS, colour: str = "content") -> np.ndarray:
    """Draw one image, (size, size, 3) uint8 RGB. colour: "content" (hue from the grid) or "class"."""
    levels = content_factors_of(content_id, grid)
    vals = factor_values(grid)
    x, y, scale, rot, hue = (vals[f][i] for f, i in zip(FACTORS, levels))
    if colour == "class":
        hue = class_hue(shapes[shape_id])
    big = size * _SUPERSAMPLE
    angle = np.deg2rad(rot)
    rotm = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = _unit_polygon(shapes[shape_id]) @ rotm.T * (scale * big) + np.array([x * big, y * big])
    r, g, b = colorsys.hsv_to_rgb(float(hue), 0.85, 1.0)
    canvas = np.zeros((big, big, 3), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], (int(r * 255), int(g * 255), int(b * 255)),
                 lineType=cv2.LINE_AA, shift=4)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def render_truth(class_id: int, content_id: int, img_size: int, grid: dict[str, int],
                 shapes: Sequence[str] = SHAPES, colour: str = "content") -> np.ndarray:
    """The image the store holds for (class, content) at img_size: same drawing, same resize."""
    from lordkit.data.preprocess import normalise_image

    return normalise_image(render(class_id, content_id, grid, shapes, colour=colour), img_size, 3)


def _load(shape_id: int, content_ids: np.ndarray, grid: dict[str, int], shapes: Sequence[str],
          colour: str) -> Loaded:
    imgs = np.stack([render(shape_id, int(c), grid, shapes, colour=colour) for c in content_ids])
    return Loaded(images=imgs, class_ids=shape_id, content_ids=content_ids)


@register("synthetic", "generated 2-D shapes (class = shape; content = x, y, scale, rotation, hue, or colour per "
          "shape with --opt colour=class); no path",
          needs_path=False)
def open_synthetic(path: Path | None, opts: Options) -> Source:
    colour = opts.get("colour", "content")
    if colour not in ("content", "class"):
        raise LordkitError(f"--opt colour={colour!r}: expected content (hue is a content factor) or class "
                           "(each shape has its own hue)")
    grid = {f: opts.get(f"n_{f}", 1 if f == "hue" and colour == "class" else DEFAULT_GRID[f], int) for f in FACTORS}
    if colour == "class" and grid["hue"] != 1:
        raise LordkitError("--opt colour=class gives each shape its own hue: leave out --opt n_hue")
    n_shapes = opts.get("n_shapes", len(SHAPES), int)
    if not 2 <= n_shapes <= len(SHAPES):
        raise LordkitError(f"--opt n_shapes must be between 2 and {len(SHAPES)}")
    if any(n < 1 or n > 32 for n in grid.values()):
        raise LordkitError("--opt n_<factor> values must be between 1 and 32")
    shapes = list(SHAPES[:n_shapes])
    n_contents = int(np.prod([grid[f] for f in FACTORS]))
    chunks = []
    for s in range(n_shapes):
        for start in range(0, n_contents, 64):
            ids = np.arange(start, min(start + 64, n_contents))
            chunks.append(Chunk(f"{shapes[s]}[{start}:{start + len(ids)}]", len(ids),
                                partial(_load, s, ids, grid, shapes, colour)))
    return Source(
        class_names=shapes, channels=3, chunks=chunks,
        content_factors=[f for f in FACTORS if not (f == "hue" and colour == "class")],
        extra={"content_grid": grid, "renderable": True, "n_contents": n_contents, "colour": colour},
    )
