"""The embedded default dataset: 2-D shapes drawn with OpenCV, generated deterministically, no download.

class = shape; content = (x, y, scale, rotation, hue), every combination on a grid. With
`--opt colour=class` each shape has its own hue instead (a class attribute, as colour is for the
cars and chairs of LORD's datasets) and content is (x, y, scale, rotation). Because any
(class, content) pair can be rendered, content transfer can be scored against the true image:
`render_truth(class_id, content_id, img_size, grid, ...)` draws exactly what the store would hold.

Options that change the look (defaults reproduce the original set byte for byte):
  size=small|medium|large, or min_radius / max_radius   circumradius range as a fraction of the image
  shapes=solid|outline|mixed, or names joined by +   the classes: solid (the default: circle, cross,
                                   square, star, triangle), outline (thin and hollow: bar, chevron,
                                   hollow-square, plus, ring), mixed (circle, hollow-square, plus, ring,
                                   triangle), or e.g. ring+square+bar; n_shapes takes the first n
  background=black|grey|mid-grey|light|textured   grey: level 96, mid-grey: 128, light: 200;
                                   textured: smooth grey noise seeded by the content id (so it is part
                                   of the content, and every (class, content) pair renders)
  grey=1                           one-channel output (the shapes' brightness still follows hue)
FAMILY names a set of variants one step apart (benchmarks/synthetic_family.py trains on each).
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
OUTLINE_SHAPES = ("bar", "chevron", "hollow-square", "plus", "ring")  # thin or hollow, sorted
SHAPE_SETS = {"solid": SHAPES, "outline": OUTLINE_SHAPES,
              "mixed": ("circle", "hollow-square", "plus", "ring", "triangle")}
ALL_SHAPES = tuple(sorted(SHAPES + OUTLINE_SHAPES))
_STROKE = 0.22  # ring and hollow-square: line width as a fraction of the circumradius
FACTORS = ("x", "y", "scale", "rotation", "hue")
DEFAULT_GRID = {"x": 4, "y": 4, "scale": 3, "rotation": 4, "hue": 4}
SIZES = {"small": (0.06, 0.1), "medium": (0.17, 0.3), "large": (0.26, 0.33)}  # circumradius / image size
DEFAULT_RADIUS = SIZES["medium"]
BACKGROUNDS = ("black", "grey", "mid-grey", "light", "textured")
GREY_LEVEL = 96  # the "grey" background, 0..255
FLAT_LEVELS = {"grey": GREY_LEVEL, "mid-grey": 128, "light": 200}  # flat backgrounds other than black
_TEXTURE_CELLS = 5  # textured background: a 5x5 grid of random grey levels, smoothly interpolated
_TEXTURE_RANGE = (16, 112)  # dark enough that every hue stands out
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
    if shape in ("ring", "hollow-square"):  # the outline, stroked (see _STROKED)
        return _unit_polygon("circle" if shape == "ring" else "square")
    if shape == "plus":  # a cross of thin arms
        a, b = 1.0, 0.12
        pts = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b),
               (-b, b), (-b, a)]
        return np.array(pts, dtype=np.float64)
    if shape == "bar":  # a thin diagonal bar
        t = np.deg2rad(45.0)
        d, n = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
        return np.stack([d + 0.12 * n, d - 0.12 * n, -d - 0.12 * n, -d + 0.12 * n])
    if shape == "chevron":  # a V of two thin arms, pointing down
        w = 0.24
        pts = [(-0.8, -0.6), (0.0, 0.6 - 2 * w), (0.8, -0.6), (0.8, -0.6 + w * 1.4), (0.0, 0.6), (-0.8, -0.6 + w * 1.4)]
        return np.array(pts, dtype=np.float64)
    raise ValueError(f"unknown shape {shape!r}")


_STROKED = ("ring", "hollow-square")  # drawn as a closed line, hollow inside


def factor_values(grid: dict[str, int], radius: Sequence[float] = DEFAULT_RADIUS) -> dict[str, np.ndarray]:
    """The value of each factor level: positions and scales as fractions of the image, angles in degrees."""
    def lin(lo: float, hi: float, n: int) -> np.ndarray:
        return np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])

    return {
        "x": lin(0.33, 0.67, grid["x"]),
        "y": lin(0.33, 0.67, grid["y"]),
        "scale": lin(float(radius[0]), float(radius[1]), grid["scale"]),  # circumradius / image size
        "rotation": np.arange(grid["rotation"]) * (45.0 / max(grid["rotation"], 1)),  # 0..45 degrees
        "hue": np.arange(grid["hue"]) / grid["hue"],
    }


def content_factors_of(content_id: int, grid: dict[str, int]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(content_id, [grid[f] for f in FACTORS]))


def class_hue(shape: str, shapes: Sequence[str] = SHAPES) -> float:
    """The hue of a shape when colour is a class attribute: fixed per shape name for the solid shapes,
    spread evenly over the classes in their order otherwise."""
    if all(s in SHAPES for s in shapes):
        return SHAPES.index(shape) / len(SHAPES)
    return list(shapes).index(shape) / len(shapes)


def background_image(content_id: int, size: int, background: str = "black") -> np.ndarray:
    """The background of one image, (size, size, 3) uint8: black, a flat grey (FLAT_LEVELS), or a smooth
    grey texture that depends only on the content id (seeded by it)."""
    if background == "black":
        return np.zeros((size, size, 3), np.uint8)
    if background in FLAT_LEVELS:
        return np.full((size, size, 3), FLAT_LEVELS[background], np.uint8)
    if background == "textured":
        lo, hi = _TEXTURE_RANGE
        cells = np.random.default_rng([int(content_id), 7411]).uniform(lo, hi, (_TEXTURE_CELLS, _TEXTURE_CELLS))
        tex = cv2.resize(cells.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        return np.repeat(np.clip(np.round(tex), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    raise ValueError(f"unknown background {background!r}")


def render(shape_id: int, content_id: int, grid: dict[str, int], shapes: Sequence[str] = SHAPES,
           size: int = CANVAS, colour: str = "content", *, background: str = "black",
           radius: Sequence[float] = DEFAULT_RADIUS) -> np.ndarray:
    """Draw one image, (size, size, 3) uint8 RGB. colour: "content" (hue from the grid) or "class";
    background: one of BACKGROUNDS; radius: (min, max) circumradius as a fraction of the image."""
    levels = content_factors_of(content_id, grid)
    vals = factor_values(grid, radius)
    x, y, scale, rot, hue = (vals[f][i] for f, i in zip(FACTORS, levels))
    if colour == "class":
        hue = class_hue(shapes[shape_id], shapes)
    big = size * _SUPERSAMPLE
    angle = np.deg2rad(rot)
    rotm = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = _unit_polygon(shapes[shape_id]) @ rotm.T * (scale * big) + np.array([x * big, y * big])
    r, g, b = colorsys.hsv_to_rgb(float(hue), 0.85, 1.0)
    canvas = background_image(content_id, big, background)
    rgb = (int(r * 255), int(g * 255), int(b * 255))
    poly = [np.round(pts * 16).astype(np.int32)]
    if shapes[shape_id] in _STROKED:
        cv2.polylines(canvas, poly, True, rgb, thickness=max(1, int(round(_STROKE * scale * big))),
                      lineType=cv2.LINE_AA, shift=4)
    else:
        cv2.fillPoly(canvas, poly, rgb, lineType=cv2.LINE_AA, shift=4)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def render_truth(class_id: int, content_id: int, img_size: int, grid: dict[str, int],
                 shapes: Sequence[str] = SHAPES, colour: str = "content", *, background: str = "black",
                 radius: Sequence[float] = DEFAULT_RADIUS, channels: int = 3) -> np.ndarray:
    """The image the store holds for (class, content) at img_size: same drawing, same resize."""
    from lordkit.data.preprocess import normalise_image

    img = render(class_id, content_id, grid, shapes, colour=colour, background=background, radius=radius)
    return normalise_image(img, img_size, channels)


def truth_options(extra: dict) -> dict:
    """render_truth's drawing keywords from a store's meta.extra (stores written before these options
    existed hold the defaults)."""
    return {"colour": extra.get("colour", "content"), "background": extra.get("background", "black"),
            "radius": tuple(extra.get("radius", DEFAULT_RADIUS))}


def _load(shape_id: int, content_ids: np.ndarray, grid: dict[str, int], shapes: Sequence[str],
          colour: str, background: str, radius: tuple[float, float]) -> Loaded:
    imgs = np.stack([render(shape_id, int(c), grid, shapes, colour=colour, background=background, radius=radius)
                     for c in content_ids])
    return Loaded(images=imgs, class_ids=shape_id, content_ids=content_ids)


def _radius(opts: Options) -> tuple[float, float]:
    size = opts.get("size", None)
    lo_opt, hi_opt = opts.get("min_radius", None, float), opts.get("max_radius", None, float)
    if size is not None and size not in SIZES:
        raise LordkitError(f"--opt size={size!r}: expected {', '.join(SIZES)} (or --opt min_radius/max_radius)")
    if size is not None and (lo_opt is not None or hi_opt is not None):
        raise LordkitError("--opt size and --opt min_radius/max_radius both set the shapes' size: give one")
    lo, hi = SIZES[size] if size is not None else DEFAULT_RADIUS
    lo = lo if lo_opt is None else lo_opt
    hi = hi if hi_opt is None else hi_opt
    if not 0.02 <= lo <= hi <= 0.4:
        raise LordkitError(f"--opt min_radius/max_radius must satisfy 0.02 <= min <= max <= 0.4 (fractions of the "
                           f"image), got {lo}, {hi}")
    return float(lo), float(hi)


def _shapes(opts: Options) -> list[str]:
    value = opts.get("shapes", "solid")
    if value in SHAPE_SETS:
        return list(SHAPE_SETS[value])
    names = [n.strip() for n in value.split("+")]
    bad = [n for n in names if n not in ALL_SHAPES]
    if bad or len(set(names)) != len(names) or len(names) < 2:
        raise LordkitError(f"--opt shapes={value!r}: expected {', '.join(SHAPE_SETS)}, or two or more different "
                           f"names joined by + from {', '.join(ALL_SHAPES)}")
    return names


@register("synthetic", "generated 2-D shapes (class = shape; content = x, y, scale, rotation, hue, or colour per "
          "shape with --opt colour=class; shapes=solid|outline|mixed, size=, "
          "background=black|grey|mid-grey|light|textured, grey=1); no path",
          needs_path=False)
def open_synthetic(path: Path | None, opts: Options) -> Source:
    colour = opts.get("colour", "content")
    if colour not in ("content", "class"):
        raise LordkitError(f"--opt colour={colour!r}: expected content (hue is a content factor) or class "
                           "(each shape has its own hue)")
    grid = {f: opts.get(f"n_{f}", 1 if f == "hue" and colour == "class" else DEFAULT_GRID[f], int) for f in FACTORS}
    if colour == "class" and grid["hue"] != 1:
        raise LordkitError("--opt colour=class gives each shape its own hue: leave out --opt n_hue")
    all_shapes = _shapes(opts)
    n_shapes = opts.get("n_shapes", len(all_shapes), int)
    if not 2 <= n_shapes <= len(all_shapes):
        raise LordkitError(f"--opt n_shapes must be between 2 and {len(all_shapes)}")
    if any(n < 1 or n > 32 for n in grid.values()):
        raise LordkitError("--opt n_<factor> values must be between 1 and 32")
    radius = _radius(opts)
    background = opts.get("background", "black")
    if background not in BACKGROUNDS:
        raise LordkitError(f"--opt background={background!r}: expected {', '.join(BACKGROUNDS)}")
    grey = opts.get("grey", "0")
    if grey not in ("0", "1"):
        raise LordkitError(f"--opt grey={grey!r}: expected 0 (RGB) or 1 (one grey channel)")
    shapes = all_shapes[:n_shapes]
    n_contents = int(np.prod([grid[f] for f in FACTORS]))
    chunks = []
    for s in range(n_shapes):
        for start in range(0, n_contents, 64):
            ids = np.arange(start, min(start + 64, n_contents))
            chunks.append(Chunk(f"{shapes[s]}[{start}:{start + len(ids)}]", len(ids),
                                partial(_load, s, ids, grid, shapes, colour, background, radius)))
    factors = [f for f in FACTORS if not (f == "hue" and colour == "class")]
    return Source(
        class_names=shapes, channels=1 if grey == "1" else 3, chunks=chunks,
        content_factors=factors + (["texture"] if background == "textured" else []),
        extra={"content_grid": grid, "renderable": True, "n_contents": n_contents, "colour": colour,
               "background": background, "radius": list(radius)},
    )


# Variants one step apart from each other, each small enough to train on a 2-core CPU in minutes:
# name -> (--opt settings, --img-size). The first is the demo's set.
_CLASS_HUE = {"n_x": "4", "n_y": "4", "n_scale": "3", "n_rotation": "2", "colour": "class"}  # 5 x 96
_HUE = {"n_x": "3", "n_y": "3", "n_scale": "2", "n_rotation": "2", "n_hue": "3"}  # 5 x 108, hue is content
FAMILY: dict[str, tuple[dict[str, str], int]] = {
    "colour-class": (_CLASS_HUE, 32),
    "hue-content": (_HUE, 32),
    "hue-content-small": ({**_HUE, "size": "small"}, 32),  # like 3D Shapes: small objects, hue a factor
    "small": ({**_CLASS_HUE, "size": "small"}, 32),
    "large": ({**_CLASS_HUE, "size": "large"}, 32),
    "grey-background": ({**_CLASS_HUE, "background": "grey"}, 32),
    "textured": ({**_CLASS_HUE, "background": "textured"}, 32),
    "grey": ({**_CLASS_HUE, "grey": "1"}, 32),
    "dense-positions": ({**_CLASS_HUE, "n_x": "8", "n_y": "8", "n_scale": "1", "n_rotation": "1", "size": "small"}, 32),
    "colour-class-64px": (_CLASS_HUE, 64),
    # Thin and hollow shapes, and backgrounds other than black and dark grey.
    "outline-hue": ({**_HUE, "shapes": "outline"}, 32),  # thin/hollow shapes on black, hue a content factor
    "outline-hue-mid-grey": ({**_HUE, "shapes": "outline", "background": "mid-grey"}, 32),  # the same on grey 128
    "hue-content-mid-grey": ({**_HUE, "background": "mid-grey"}, 32),  # the solid shapes on grey 128
    "light-background": ({**_CLASS_HUE, "background": "light"}, 32),  # colour-class on grey 200
    "outline-class-light": ({**_CLASS_HUE, "shapes": "outline", "background": "light"}, 32),
}
