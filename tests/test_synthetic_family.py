"""The synthetic family: the default set stays byte-identical, every variant renders what the store
holds, bad options are one clear error, and benchmarks/synthetic_family.py runs end to end (--quick)."""

import hashlib
import json
import re

import numpy as np
import pytest

from lordkit.data.datasets.synthetic import (DEFAULT_GRID, FAMILY, FLAT_LEVELS, OUTLINE_SHAPES, SHAPE_SETS, render,
                                             render_truth, truth_options)
from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options
from lordkit.data.store import Dataset
from lordkit.errors import LordkitError

from conftest import load_benchmark

TINY_GRID = {"n_x": "2", "n_y": "1", "n_scale": "2", "n_rotation": "1", "n_shapes": "2"}

# sha256 of render_truth(class 1, content c, 32 px, DEFAULT_GRID): the default drawing, pinned.
DEFAULT_HASHES = {
    0: "d2987abca0a11faacc2b965ed6912aea04bd4446a5c2c65a59ef55c6d00f253c",
    57: "bc5653ee5a3d22d06786cfd13e03a88e22f9bf60df8791ece9f1701053ca56f6",
    255: "938e59a8bb55ca7ea131a795475e4021f8538d5c6dd6a650f9eda9508c2f435a",
}


def test_default_render_is_pinned():
    for content_id, digest in DEFAULT_HASHES.items():
        assert hashlib.sha256(render_truth(1, content_id, 32, DEFAULT_GRID)).hexdigest() == digest


def test_family_is_large_and_covers_the_steps():
    assert len(FAMILY) >= 8
    opts = [o for o, _ in FAMILY.values()]
    assert any(o.get("size") == "small" and o.get("colour", "content") == "content" for o in opts)  # like 3D Shapes
    assert any(o.get("background") == "textured" for o in opts)
    assert any(o.get("grey") == "1" for o in opts)
    assert any(o.get("colour") == "class" for o in opts)
    assert any(size == 64 for _, size in FAMILY.values())


@pytest.mark.parametrize("extra", [
    {"size": "small", "n_hue": "2"},
    {"size": "large", "colour": "class"},
    {"min_radius": "0.1", "max_radius": "0.12", "colour": "class"},
    {"background": "grey", "colour": "class"},
    {"background": "textured", "n_hue": "2"},
    {"grey": "1", "colour": "class", "background": "textured"},
    {"shapes": "outline", "background": "mid-grey"},
    {"shapes": "outline", "colour": "class", "background": "light"},
    {"shapes": "mixed", "n_hue": "2"},
    {"shapes": "ring+square+bar", "colour": "class"},
], ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_every_variant_renders_what_the_store_holds(tmp_path, extra):
    preprocess("synthetic", None, tmp_path / "s", img_size=32, opts=Options({**TINY_GRID, **extra}),
               show_progress=False)
    ds = Dataset(tmp_path / "s")
    assert ds.meta.channels == (1 if extra.get("grey") == "1" else 3)
    opts = truth_options(ds.meta.extra)
    for i in range(len(ds)):
        truth = render_truth(int(ds.class_ids[i]), int(ds.content_ids[i]), 32, ds.meta.extra["content_grid"],
                             ds.meta.class_names, channels=ds.meta.channels, **opts)
        np.testing.assert_array_equal(truth, ds.images[i])
    if extra.get("background") == "textured":
        assert ds.meta.content_factors[-1] == "texture"
        # The texture follows the content: same content, same background away from the shape.
        corner = np.asarray(ds.images)[:, :3, :3].reshape(len(ds), -1).astype(int)
        by_content = {}
        for c, px in zip(ds.content_ids.tolist(), corner):
            by_content.setdefault(c, []).append(px)
        assert all(np.array_equal(v[0], w) for v in by_content.values() for w in v[1:])
        assert len({tuple(v[0]) for v in by_content.values()}) > 1


def test_sizes_change_the_shapes_area():
    grid = {"x": 1, "y": 1, "scale": 1, "rotation": 1, "hue": 1}
    area = {size: int((render_truth(0, 0, 32, grid, radius=r) > 0).any(-1).sum())
            for size, r in (("small", (0.06, 0.1)), ("large", (0.26, 0.33)))}
    assert area["small"] * 4 < area["large"]


@pytest.mark.parametrize("opts, message", [
    ({"size": "huge"}, "size='huge'"),
    ({"size": "small", "min_radius": "0.1"}, "give one"),
    ({"min_radius": "0.3", "max_radius": "0.2"}, "min_radius/max_radius"),
    ({"background": "white"}, "background='white'"),
    ({"grey": "yes"}, "grey='yes'"),
    ({"shapes": "blobs"}, "shapes='blobs'"),
    ({"shapes": "ring+ring"}, "shapes='ring+ring'"),
    ({"shapes": "ring+donut"}, "shapes='ring+donut'"),
    ({"shapes": "outline", "n_shapes": "6"}, "n_shapes must be between 2 and 5"),
])
def test_bad_options_are_one_clear_error(tmp_path, opts, message):
    with pytest.raises(LordkitError, match=re.escape(message)):
        preprocess("synthetic", None, tmp_path / "bad", img_size=32, opts=Options({**TINY_GRID, **opts}),
                   show_progress=False)


def test_thin_and_hollow_shapes_are_thin_and_hollow():
    """A ring and a hollow square leave their centre as background; every outline shape covers much less
    of the image than its solid counterpart of the same size."""
    grid = {"x": 1, "y": 1, "scale": 1, "rotation": 1, "hue": 1}  # centred, one scale
    radius = (0.3, 0.3)
    for bg, level in [("black", 0), *FLAT_LEVELS.items()]:
        for name in ("ring", "hollow-square"):
            img = render(OUTLINE_SHAPES.index(name), 0, grid, OUTLINE_SHAPES, 128, background=bg, radius=radius)
            assert (img[60:68, 60:68] == level).all(), (name, bg)  # the centre is background
            assert (img[64, :] != level).any(axis=-1).sum() < 0.4 * 2 * 0.3 * 128  # two strokes, not a disc
    area = {name: int((render(i, 0, grid, shapes, 128, radius=radius) > 0).any(-1).sum())
            for shapes in SHAPE_SETS.values() for i, name in enumerate(shapes)}
    assert area["ring"] < 0.55 * area["circle"] and area["hollow-square"] < 0.7 * area["square"]
    assert area["plus"] < 0.7 * area["cross"] and max(area["bar"], area["chevron"]) < 0.4 * area["square"]


def test_new_backgrounds_are_flat_at_their_level():
    grid = {"x": 1, "y": 1, "scale": 1, "rotation": 1, "hue": 1}
    for bg, level in FLAT_LEVELS.items():
        img = render_truth(0, 0, 32, grid, background=bg)
        assert (img[:2, :2] == level).all() and (img[:2, -2:] == level).all()


@pytest.mark.parametrize("name", [n for n in FAMILY if "outline" in n or "mid-grey" in n or "light" in n])
def test_new_family_variants_generate(tmp_path, name):
    """The variants with thin/hollow shapes or new backgrounds generate (on a tiny grid) and render true."""
    opts, img_size = FAMILY[name]
    small = {**opts, "n_x": "2", "n_y": "1", "n_scale": "1", "n_rotation": "1"}
    if opts.get("colour") != "class":
        small["n_hue"] = "2"
    preprocess("synthetic", None, tmp_path / "s", img_size=img_size, opts=Options(small), show_progress=False)
    ds = Dataset(tmp_path / "s")
    assert len(ds.meta.class_names) == 5 and len(ds) == 5 * ds.meta.extra["n_contents"]
    if opts.get("shapes") == "outline":
        assert tuple(ds.meta.class_names) == OUTLINE_SHAPES
    level = FLAT_LEVELS.get(opts.get("background", "black"), 0)
    assert (np.asarray(ds.images)[:, 0, 0] == level).all()
    o = truth_options(ds.meta.extra)
    for i in range(len(ds)):
        truth = render_truth(int(ds.class_ids[i]), int(ds.content_ids[i]), img_size, ds.meta.extra["content_grid"],
                             ds.meta.class_names, channels=ds.meta.channels, **o)
        np.testing.assert_array_equal(truth, ds.images[i])


def test_family_spans_thin_shapes_and_light_backgrounds():
    opts = [o for o, _ in FAMILY.values()]
    assert any(o.get("shapes") == "outline" and o.get("background") == "mid-grey" and o.get("colour") != "class"
               for o in opts)  # thin/hollow shapes on grey 128 with hue a content factor
    assert any(o.get("shapes") == "outline" and o.get("background", "black") == "black" for o in opts)
    assert any(o.get("background") == "light" for o in opts)


def test_benchmark_quick_writes_the_table_and_grids(tmp_path, capsys):
    bench = load_benchmark("synthetic_family")
    out = tmp_path / "out"
    assert bench.main(["--out", str(out), "--quick", "--variants", "hue-content-small,grey"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["hue-content-small", "grey"]
    for r in rows:
        assert r["transfer_over_copy"] > 0 and 0 <= r["leakage"] <= 1 and r["epochs"] == [1, 1]
        assert isinstance(r["collapsed"], bool) and (out / f"{r['variant']}-transfer.png").is_file()
    table = (out / "results.md").read_text()
    assert "| hue-content-small |" in table and "| grey |" in table
    assert bench.main(["--out", str(out), "--quick", "--variants", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_a_stage_share_is_checked_and_named_in_the_table(tmp_path, capsys):
    bench = load_benchmark("synthetic_family")
    assert bench.main(["--out", str(tmp_path), "--quick", "--variants", "grey", "--stage1-share", "1.2"]) == 2
    assert "--stage1-share must be between 0 and 1, got 1.2" in capsys.readouterr().err
    header = {"preset": "small", "minutes": 15, "quick": False, "cpu": "x", "threads": 1, "torch": "t"}
    assert "(15 min per variant)" in bench.markdown([], {**header, "stage1_share": bench.STAGE1_SHARE})
    assert "(15 min per variant, 50% of training to stage 1)" in bench.markdown([], {**header, "stage1_share": 0.5})
