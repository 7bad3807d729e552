"""The small-data recipe's parts: content codes initialised from the data (class means removed), the
squared-error losses, and that training starts from those codes."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lordkit.config import ConfigError
from lordkit.data.store import Dataset, DatasetMeta, StoreWriter
from lordkit.losses import L1L2Loss, L2Loss, make_loss
from lordkit.training import train_latent
from lordkit.training import init
from lordkit.training.init import pca_content_codes
from test_training import data, quiet, tiny_cfg  # noqa: F401  (the module's dataset fixture)


def low_rank_dataset(path, n_classes=3, per_class=40, side=16, seed=0):
    """Images = a class pattern + a * U + b * V (two fixed directions), a and b drawn per image: the
    within-class variation has rank 2, and its coordinates are known."""
    rng = np.random.default_rng(seed)
    pattern = rng.uniform(0.2, 0.5, (n_classes, side, side, 3))
    u, v = rng.normal(0, 1, (2, side, side, 3))
    u /= np.abs(u).max() * 10
    v /= np.abs(v).max() * 10
    cls = np.repeat(np.arange(n_classes), per_class)
    ab = rng.uniform(-1, 1, (len(cls), 2))
    imgs = pattern[cls] + ab[:, :1, None, None] * u + ab[:, 1:, None, None] * v
    path.mkdir()
    w = StoreWriter(path, side, 3)
    w.add(np.clip(imgs * 255, 0, 255).round().astype(np.uint8), cls, np.arange(len(cls)))
    w.close(DatasetMeta(dataset_id="arrays", img_size=side, channels=3,
                        class_names=[f"c{i}" for i in range(n_classes)], n_imgs=len(cls)))
    return Dataset(path), cls, ab


def test_codes_recover_the_within_class_variation_and_hold_no_class_mean(tmp_path):
    ds, cls, ab = low_rank_dataset(tmp_path / "d")
    codes = pca_content_codes(ds, dim=4, std=0.7, seed=0, mode="signed")
    assert codes.shape == (len(ds), 4) and codes.dtype == np.float32
    # The first two dimensions span (a, b) less its class means: a linear fit from them and the class
    # explains nearly all of it.
    x = np.c_[codes[:, :2], np.eye(3)[cls]]
    for target in ab.T:
        coef, *_ = np.linalg.lstsq(x, target, rcond=None)
        resid = target - x @ coef
        assert resid.std() < 0.05 * target.std()
    # Scaled to the std asked for; the mean code of every class is 0 (class means were removed).
    assert np.allclose(codes[:, :2].std(axis=0), 0.7, atol=1e-4)
    for c in range(3):
        assert np.abs(codes[cls == c, :2].mean(axis=0)).max() < 1e-3
    # Beyond the data's rank (2 + rounding noise) nothing is invented from pure noise: the last
    # dimensions carry the 8-bit rounding only and are scaled like the rest, or stay 0 when none is left.
    assert np.isfinite(codes).all()
    # Seeded and deterministic; a fit on a subsample spans the same plane.
    assert np.array_equal(codes, pca_content_codes(ds, dim=4, std=0.7, seed=0, mode="signed"))
    sub = pca_content_codes(ds, dim=2, std=0.7, seed=1, max_fit=60, mode="signed")
    coef, *_ = np.linalg.lstsq(sub, codes[:, :2], rcond=None)
    assert (codes[:, :2] - sub @ coef).std() < 0.02 * 0.7


def test_codes_of_degenerate_data(tmp_path):
    # Every image the same: nothing varies within a class, every code is 0.
    path = tmp_path / "flat"
    path.mkdir()
    w = StoreWriter(path, 8, 1)
    w.add(np.full((6, 8, 8, 1), 90, np.uint8), np.array([0, 0, 0, 1, 1, 1]), np.arange(6))
    w.close(DatasetMeta(dataset_id="arrays", img_size=8, channels=1, class_names=["a", "b"], n_imgs=6))
    codes = pca_content_codes(Dataset(path), dim=3, std=1.0, seed=0)
    assert codes.shape == (6, 3) and not codes.any()


def test_codes_of_large_images_are_pooled(tmp_path, monkeypatch):
    import lordkit.training.init as init

    ds, _, _ = low_rank_dataset(tmp_path / "d", side=16)
    monkeypatch.setattr(init, "FIT_SIDE", 8)  # pooled 16 -> 8 px: the same two directions, averaged
    codes = init.pca_content_codes(ds, dim=2, std=1.0, seed=0, mode="signed")
    monkeypatch.setattr(init, "FIT_SIDE", 32)
    full = init.pca_content_codes(ds, dim=2, std=1.0, seed=0, mode="signed")
    coef, *_ = np.linalg.lstsq(codes, full, rcond=None)
    assert (full - codes @ coef).std() < 0.1


def test_blurred_features_give_outlines_of_two_classes_one_code_per_place_and_size(tmp_path):
    # A plus and a ring (thin strokes that barely share a pixel) at 3 x 3 places and 2 sizes, on black
    # and on mid-grey: unblurred, a content's nearest code in the other class is often another place
    # or size; blurred by a quarter of the side, it is the same content for every image.
    from lordkit.data.datasets.synthetic import render
    from lordkit.data.preprocess import normalise_image

    grid = {"x": 3, "y": 3, "scale": 2, "rotation": 1, "hue": 1}
    n = 18
    for background in ("black", "mid-grey"):
        imgs = [normalise_image(render(c, k, grid, ("plus", "ring"), background=background), 32, 3)
                for c in range(2) for k in range(n)]
        path = tmp_path / background
        path.mkdir()
        w = StoreWriter(path, 32, 3)
        w.add(np.stack(imgs), np.repeat([0, 1], n), np.tile(np.arange(n), 2))
        w.close(DatasetMeta(dataset_id="arrays", img_size=32, channels=3, class_names=["plus", "ring"], n_imgs=2 * n))
        ds = Dataset(path)

        def matched(blur, mode):
            codes = pca_content_codes(ds, dim=4, std=1.0, seed=0, mode=mode, blur=blur)
            nearest = ((codes[:n, None] - codes[None, n:]) ** 2).sum(-1)
            return min((nearest.argmin(1) == np.arange(n)).mean(), (nearest.argmin(0) == np.arange(n)).mean())

        for mode in ("deviation", "signed"):
            assert matched(0.0, mode) <= 0.5
            assert matched(0.25, mode) == 1.0
    with pytest.raises(ConfigError, match="pca_blur"):
        tiny_cfg("latent.pca_blur=0.6")
    with pytest.raises(ConfigError, match="pca_blur"):
        tiny_cfg("latent.pca_blur=-0.1")


def test_stage_one_starts_from_the_pca_codes(data, tmp_path):  # noqa: F811
    m = tmp_path / "m"
    train_latent(data, m, tiny_cfg("latent.n_epochs=0", "latent.pca_init=0.5"), **quiet())
    table = load_file(m / "latent.safetensors")["content_embedding.embedding.weight"].numpy()
    want = pca_content_codes(data, table.shape[1], 0.5, seed=0, mode="colour")  # the small preset's form
    assert np.array_equal(table, want)
    # Off: the paper's uniform start (the preset's start-code form is dropped with it).
    m2 = tmp_path / "m2"
    train_latent(data, m2, tiny_cfg("latent.n_epochs=0", "latent.pca_init=0"), **quiet())
    table = load_file(m2 / "latent.safetensors")["content_embedding.embedding.weight"].numpy()
    assert np.abs(table).max() <= 0.05


def test_pca_init_is_validated():
    with pytest.raises(ConfigError, match="pca_init"):
        tiny_cfg("latent.pca_init=-1")
    # A feature choice that the uniform start would ignore is refused, in either order of the overrides.
    for overrides in (("latent.pca_init=0", "latent.pca_features=colour"),
                      ("latent.pca_features=signed", "latent.pca_init=0")):
        with pytest.raises(ConfigError, match="latent.pca_init=0 turns off"):
            tiny_cfg(*overrides)
    assert tiny_cfg("latent.pca_init=0").latent.pca_features == "deviation"
    with pytest.raises(ConfigError, match="latent.pca_init=0 turns off"):
        tiny_cfg("latent.pca_init=0", "latent.pca_blur=0.25")
    assert tiny_cfg("latent.pca_init=2", "latent.pca_features=colour").latent.pca_features == "colour"


def test_squared_error_losses():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert L2Loss()(a, b).item() == pytest.approx(0.25)
    assert L1L2Loss()(a, b).item() == pytest.approx(0.75)
    assert isinstance(make_loss("l2"), L2Loss) and isinstance(make_loss("l1+l2"), L1L2Loss)
    with pytest.raises(ConfigError, match="l1\\+l2"):
        tiny_cfg("latent.loss=l3")
    # Gradients reach the prediction.
    p = torch.zeros(1, 1, 2, 2, requires_grad=True)
    L1L2Loss()(p, torch.ones(1, 1, 2, 2)).backward()
    assert (p.grad < 0).all()


def test_output_margin_puts_black_and_white_at_finite_logits():
    from lordkit.config import ModelConfig, TINY_MODEL
    from lordkit.models import Generator

    torch.manual_seed(0)
    cfg = ModelConfig(img_size=32, **{**TINY_MODEL, "n_adain_layers": 2}, output_margin=0.01)
    gen = Generator(cfg)
    code, params = torch.randn(4, cfg.content_dim), torch.randn(4, cfg.n_adain_layers, cfg.adain_dim, 2)
    plain = Generator(ModelConfig(img_size=32, **{**TINY_MODEL, "n_adain_layers": 2}))
    plain.load_state_dict(gen.state_dict())  # no new weights: the same state dict fits both
    s = plain(code, params)
    assert torch.allclose(gen.train()(code, params), (s - 0.01) / 0.98, atol=1e-6)
    assert torch.allclose(gen.eval()(code, params), ((s - 0.01) / 0.98).clamp(0, 1), atol=1e-6)
    # A pixel that is 0 in every target: its loss has a minimum at a finite logit, where the gradient
    # changes sign (a plain sigmoid keeps pushing the logit down forever).
    for logit, sign in [(-8.0, -1.0), (-2.0, 1.0)]:
        z = torch.tensor([logit], requires_grad=True)
        L1L2Loss()((torch.sigmoid(z) - 0.01) / 0.98, torch.zeros(1)).backward()
        assert torch.sign(z.grad).item() == sign
    with pytest.raises(ConfigError, match="output_margin"):
        tiny_cfg("model.output_margin=0.5")


def test_choose_preset_says_which_and_why():
    from lordkit.config import LordConfig, SMALL_DATA_IMAGES, choose_preset, fit_to_images, preset

    known = ["celeba", "folder", "synthetic"]
    name, cfg, why = choose_preset("synthetic", 480)
    assert name == "small" and cfg == preset("small") == preset("synthetic") and "synthetic" in why
    name, cfg, why = choose_preset("folder", 1200)
    assert name == "small" and "1,200 images" in why and f"{SMALL_DATA_IMAGES:,}" in why
    name, cfg, why = choose_preset("folder", SMALL_DATA_IMAGES)
    assert name == "folder" and cfg == LordConfig() and "paper's settings" in why
    name, cfg, why = choose_preset("celeba", 300)  # the paper's datasets keep the paper's settings
    assert cfg == LordConfig() and "celeba" in why
    name, cfg, why = choose_preset("celeba", 300, explicit="synthetic", known=known)
    assert name == "small" and "--preset" in why and "alias" in why
    with pytest.raises(ConfigError, match="unknown preset 'smal'.*small"):
        choose_preset("folder", 10, explicit="smal", known=known)
    # At a larger image size the generator gets the upsamplings it needs.
    big = fit_to_images(preset("small"), 128, 1)
    assert big.model.img_size == 128 and big.model.channels == 1 and big.model.gen_init_size <= 8
    assert fit_to_images(preset("small"), 32, 3).model.n_adain_layers == preset("small").model.n_adain_layers


def test_small_preset_counts_its_length_in_images_seen():
    from lordkit.config import LENGTH_REFERENCE_IMAGES, PRESET_IMAGES_SEEN, LordConfig, fit_to_length, preset

    small = preset("small")
    cfg, line = fit_to_length(small, "small", LENGTH_REFERENCE_IMAGES)  # the preset's own epochs
    assert cfg == small and "300 + 120 epochs of 384 images" in line
    for n in (100, 1438, 5000, 20_000, 10**6):
        cfg, line = fit_to_length(small, "synthetic", n)  # aliases count too
        seen = PRESET_IMAGES_SEEN["small"]
        assert cfg.latent.n_epochs == max(1, round(seen["latent"] / n))
        assert cfg.amortized.n_epochs == max(1, round(seen["amortized"] / n))
        # the noise warm-up stays the first third of stage 1, the sample grids about 30 a run
        assert cfg.latent.noise_warmup_epochs == pytest.approx(cfg.latent.n_epochs / 3)
        assert cfg.latent.sample_every_epochs == max(1, round(10 * cfg.latent.n_epochs / 300))
        assert cfg.model == small.model and cfg.latent.lr_latent == small.latent.lr_latent
        assert f"{n:,} images" in line
    # images seen stay within one epoch of the preset's whatever the set's size
    for n in (100, 1438, 5000):
        cfg, _ = fit_to_length(small, "small", n)
        assert abs(cfg.latent.n_epochs * n - PRESET_IMAGES_SEEN["small"]["latent"]) <= n / 2
    # presets counted in epochs (the paper's) are left as they are
    assert fit_to_length(LordConfig(), "celeba", 1000) == (LordConfig(), None)


def test_train_prints_the_preset_and_why(cli, base, tmp_path):
    from test_cli_data import make_folder
    from test_training import TINY_SET

    src = make_folder(tmp_path / "imgs", n_per_class=8)
    assert cli("preprocess", "-di", "folder", "-dp", src, "-dn", "f", "--img-size", "32").exit_code == 0
    r = cli("train", "-dn", "f", "-mn", "m", *TINY_SET, "--epochs", "1", "--device", "cpu", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    assert "preset small: 24 images of folder data, fewer than 20,000" in r.stdout
    assert "length: 115,200 + 46,080 images seen; 4800 + 1920 epochs of 24 images" in r.stdout
    cfg = json.loads((base / "models" / "m" / "config.json").read_text())
    assert cfg["model"]["img_size"] == 32 and cfg["latent"]["pca_init"] > 0
    # --epochs wins over the preset's length, its schedule keeping its share (a third of the run warms
    # the noise up); stage 2 keeps the length's epochs
    assert cfg["latent"]["n_epochs"] == 1 and cfg["amortized"]["n_epochs"] == 1920
    assert cfg["latent"]["noise_warmup_epochs"] == pytest.approx(1 / 3)
    r = cli("train", "-dn", "f", "-mn", "m3", *TINY_SET, "--epochs", "30", "--set", "latent.noise_warmup_epochs=4",
            "--device", "cpu", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    latent = json.loads((base / "models" / "m3" / "config.json").read_text())["latent"]
    assert latent["n_epochs"] == 30 and latent["noise_warmup_epochs"] == 4  # what --set says wins
    r = cli("train", "-dn", "f", "-mn", "m2", *TINY_SET, "--epochs", "1", "--preset", "celeba",
            "--device", "cpu", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    assert "preset celeba: chosen with --preset" in r.stdout
    assert json.loads((base / "models" / "m2" / "config.json").read_text())["latent"]["pca_init"] == 0


def test_deviation_features_are_blind_to_the_class_colours(tmp_path):
    # Grey background; class 0 draws a white square, class 1 a black one, at one of 8 positions (the
    # content). The same content must start with the same code in both classes: "deviation" does that,
    # "signed" gives the two classes opposite codes.
    side, n_pos = 16, 8
    imgs, cls, content = [], [], []
    for c, level in enumerate((255, 1)):  # 127 above and below the grey
        for p in range(n_pos):
            img = np.full((side, side, 3), 128, np.uint8)
            y, x = divmod(p, 4)
            img[2 + 6 * y:6 + 6 * y, 1 + 4 * x:4 + 4 * x] = level
            imgs.append(img), cls.append(c), content.append(p)
    path = tmp_path / "d"
    path.mkdir()
    w = StoreWriter(path, side, 3)
    w.add(np.stack(imgs), np.array(cls), np.array(content))
    w.close(DatasetMeta(dataset_id="arrays", img_size=side, channels=3, class_names=["white", "black"],
                        n_imgs=len(imgs)))
    ds = Dataset(path)
    dev = pca_content_codes(ds, dim=4, std=1.0, seed=0, mode="deviation")
    signed = pca_content_codes(ds, dim=4, std=1.0, seed=0, mode="signed")
    assert np.allclose(dev[:n_pos], dev[n_pos:], atol=1e-4)
    assert np.allclose(signed[:n_pos], -signed[n_pos:], atol=1e-4)
    with pytest.raises(ValueError, match="unknown mode"):
        pca_content_codes(ds, dim=4, std=1.0, seed=0, mode="hue")
    with pytest.raises(ConfigError, match="pca_features"):
        tiny_cfg("latent.pca_features=hue")


def shapes_on_grey(path, hue_is_content: bool, channels: int = 3, background: int = 128, textured: bool = False):
    """Two classes (a square, a bar) at 4 positions and, where hue_is_content, in 3 hues of one
    brightness (content = position x hue); otherwise each class has its own hue. textured: each
    image's background is grey noise of its own (levels 60-200) instead of the flat level."""
    side, hues = 16, ((230, 40, 40), (40, 230, 40), (40, 40, 230))
    rng = np.random.default_rng(0)
    imgs, cls, content = [], [], []
    for c in range(2):
        for p in range(4):
            for h in range(3 if hue_is_content else 1):
                img = np.full((side, side, 3), background, np.uint8)
                if textured:
                    img[:] = rng.integers(60, 200, (side, side, 1), dtype=np.uint8)
                y, x = 2 + 7 * (p // 2), 2 + 7 * (p % 2)
                img[y:y + 5, x:x + (5 if c == 0 else 2)] = hues[h if hue_is_content else c]
                imgs.append(img if channels == 3 else img.mean(axis=-1, keepdims=True).astype(np.uint8))
                cls.append(c), content.append(3 * p + h)
    path.mkdir()
    w = StoreWriter(path, side, channels)
    w.add(np.stack(imgs), np.array(cls), np.array(content))
    w.close(DatasetMeta(dataset_id="arrays", img_size=side, channels=channels, class_names=["square", "bar"],
                        n_imgs=len(imgs)))
    return Dataset(path), np.array(content)


@pytest.mark.parametrize("background", [128, 0, 200])
def test_colour_features_add_each_images_hue(tmp_path, background):
    ds, content = shapes_on_grey(tmp_path / "d", hue_is_content=True, background=background)
    dev = pca_content_codes(ds, dim=6, std=1.0, seed=0, mode="deviation")
    col = pca_content_codes(ds, dim=6, std=1.0, seed=0, mode="colour")
    hue = np.eye(3)[content % 3]

    def r2(codes, target):
        x = np.c_[codes, np.ones(len(codes))]
        coef, *_ = np.linalg.lstsq(x, target, rcond=None)
        return 1 - ((target - x @ coef) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()

    # The deviation maps are blind to the hue; the colour codes' last two dimensions are the hue
    # whatever the background, the same pair for the same hue in both classes (object sizes 25 and
    # 10 px: only the small floor of the chroma size tells them apart).
    assert r2(dev, hue) < 0.1
    assert r2(col[:, 4:], hue) > 0.99
    assert np.allclose(col[:12, 4:], col[12:, 4:], rtol=0.05, atol=0.05)
    # Its first dimensions are the deviation components, fewer of them; each dimension scaled to std.
    assert np.allclose(np.abs(col[:, :4]), np.abs(dev[:, :4]), atol=1e-4)
    assert np.allclose(col[:, :4].std(axis=0), 1.0, atol=1e-3)
    assert np.allclose(col[:, 4:].std(axis=0), init.HUE_GAIN, atol=1e-3)


@pytest.mark.parametrize("hue_is_content, channels, textured", [(False, 3, False), (False, 3, True), (True, 1, False)])
def test_colour_features_without_hue_within_classes_are_the_deviation_ones(tmp_path, hue_is_content, channels,
                                                                           textured):
    # Hue a class attribute (it varies between classes only; a grey texture that differs from image
    # to image adds no chroma), or one-channel images: nothing to add.
    ds, _ = shapes_on_grey(tmp_path / "d", hue_is_content=hue_is_content, channels=channels, textured=textured)
    assert np.array_equal(pca_content_codes(ds, dim=4, std=1.0, seed=0, mode="colour"),
                          pca_content_codes(ds, dim=4, std=1.0, seed=0, mode="deviation"))


def test_a_non_finite_loss_without_checkpoint_offers_no_resume(data, tmp_path):  # noqa: F811
    from lordkit.models import Generator
    from lordkit.training import NonFiniteLoss

    def nan_images(module, args, output):  # from the first step on: nothing to resume from
        return torch.full_like(output, float("nan")) if isinstance(module, Generator) else None

    handle = torch.nn.modules.module.register_module_forward_hook(nan_images)
    try:
        with pytest.raises(NonFiniteLoss) as e:
            train_latent(data, tmp_path / "m", tiny_cfg("latent.n_epochs=1"), **quiet())
    finally:
        handle.remove()
    assert "no checkpoint was written yet" in str(e.value) and "--resume" not in str(e.value)


def test_every_number_of_the_config_must_be_finite(tmp_path):
    # A rate, decay or std of inf or nan would only show up as a NaN loss, with a hint to lower the
    # learning rate: refused when the config is read, in every section, as a --set and in config.json.
    for key in ("amortized.lr", "latent.content_decay", "latent.lr_generator", "model.content_std",
                "latent.collapse_threshold"):
        for value in ("inf", "-inf", "nan"):
            with pytest.raises(ConfigError, match=key.split(".")[1]):
                tiny_cfg(f"{key}={value}")
    with pytest.raises(ConfigError, match="amortized.lr must be a finite number, got inf"):
        tiny_cfg("amortized.lr=inf")
    raw = tiny_cfg().to_json()
    raw["latent"]["content_decay"] = float("inf")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))  # written as Infinity, which json reads back as inf
    with pytest.raises(ConfigError, match="latent.content_decay must be a finite number"):
        type(tiny_cfg()).load(path)
    assert type(tiny_cfg()).from_json(tiny_cfg().to_json()) == tiny_cfg()  # finite configs still read
