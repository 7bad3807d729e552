"""Typed configuration of a LORD model and its two training stages, saved as JSON next to the weights.

`LordConfig` has three sections: `model` (architecture; everything the weights' shapes depend on),
`latent` (stage 1, latent optimization) and `amortized` (stage 2, encoder training). Defaults are
those of the public PyTorch re-implementation of LORD. Sizes that follow from others (encoder
flatten size, generator start size) are derived properties, never stored.

This module imports nothing heavy (no torch): configs are read by the CLI before torch is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lordkit.errors import LordkitError
from lordkit.fsutil import atomic_write_json, read_json

LOSSES = ("vgg", "l1", "l2", "l1+l2", "lap1")
PCA_FEATURES = ("deviation", "signed", "colour")  # lordkit.training.init.MODES


class ConfigError(LordkitError, ValueError):
    """An invalid config value, key or override; one line. Both a LordkitError (the CLI prints it)
    and a ValueError (what callers validating arguments expect)."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclass
class ModelConfig:
    """Architecture. n_imgs / n_classes come from the training data (0 = not set yet)."""

    img_size: int = 64  # square images, a power of two in 32..256
    channels: int = 3  # 1 (grey) or 3 (RGB)
    n_imgs: int = 0  # rows of the content-code table (stage 1)
    n_classes: int = 0  # rows of the class-code table
    content_dim: int = 128
    class_dim: int = 256
    content_std: float = 1.0  # std of the Gaussian noise added to content codes in stage 1
    n_adain_layers: int = 4  # also the number of 2x upsamplings in the generator
    adain_dim: int = 256  # channels of every AdaIN conv block
    gen_last_dim: int = 64  # channels of the generator's 5x5 conv before the output conv
    enc_conv_dims: tuple[int, ...] = (64, 128, 256, 256, 256)  # 7x7 stride-1 conv, then stride-2 4x4 convs
    enc_fc_dim: int = 256  # width of the encoders' two hidden fc layers
    # > 0: the generator's sigmoid output s becomes (s - m) / (1 - 2m), clamped to [0, 1] outside training
    # (lordkit.models.Generator): black and white are reached at finite logits. 0 = the paper's plain sigmoid.
    output_margin: float = 0.0
    # Per channel, subtracted from the encoders' input images (0-1 scale; empty: nothing subtracted).
    # Stage 2 sets it to the training images' mean where amortized.centre_inputs is on.
    encoder_input_mean: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.enc_conv_dims = tuple(self.enc_conv_dims)
        self.encoder_input_mean = tuple(float(v) for v in self.encoder_input_mean)
        _require(
            isinstance(self.img_size, int) and _is_pow2(self.img_size) and 32 <= self.img_size <= 256,
            f"model.img_size must be a power of two between 32 and 256, got {self.img_size}",
        )
        _require(self.channels in (1, 3), f"model.channels must be 1 or 3, got {self.channels}")
        _require(self.n_imgs >= 0 and self.n_classes >= 0,
                 f"model.n_imgs and model.n_classes must be >= 0, got {self.n_imgs}, {self.n_classes}")
        for name in ("content_dim", "class_dim", "adain_dim", "gen_last_dim", "enc_fc_dim"):
            _require(getattr(self, name) > 0, f"model.{name} must be > 0, got {getattr(self, name)}")
        _require(0 <= self.output_margin < 0.5, f"model.output_margin must be in [0, 0.5), got {self.output_margin}")
        _require(self.content_std >= 0, f"model.content_std must be >= 0, got {self.content_std}")
        _require(self.adain_dim % 8 == 0, f"model.adain_dim must be a multiple of 8, got {self.adain_dim}")
        _require(
            1 <= self.n_adain_layers and 2**self.n_adain_layers <= self.img_size,
            f"model.n_adain_layers must be in 1..log2(img_size)={self.img_size.bit_length() - 1}, "
            f"got {self.n_adain_layers}",
        )
        # The generator's fc layers grow with the 4th power of its start size: 16 px would be ~1e9 weights.
        _require(
            self.gen_init_size <= 8,
            f"model.n_adain_layers={self.n_adain_layers} starts the generator at {self.gen_init_size} px; "
            f"use n_adain_layers >= {self.min_adain_layers(self.img_size)} for img_size {self.img_size}",
        )
        _require(len(self.enc_conv_dims) >= 1 and all(d > 0 for d in self.enc_conv_dims),
                 f"model.enc_conv_dims must be positive channel counts, got {self.enc_conv_dims}")
        _require(len(self.encoder_input_mean) in (0, self.channels)
                 and all(0.0 <= v <= 1.0 for v in self.encoder_input_mean),
                 f"model.encoder_input_mean must be empty or {self.channels} values in [0, 1] (one per channel), "
                 f"got {list(self.encoder_input_mean)}")
        _require(
            2**self.enc_n_downsamplings <= self.img_size,
            f"model.enc_conv_dims has {self.enc_n_downsamplings} downsamplings, too many for img_size {self.img_size}",
        )
        _check_finite(self, "model")

    @staticmethod
    def min_adain_layers(img_size: int) -> int:
        """Fewest AdaIN layers (2x upsamplings) that start the generator at 8 px or less."""
        return max(1, int(img_size).bit_length() - 4)

    @property
    def gen_init_size(self) -> int:
        """Side of the generator's first feature map: img_size // 2**n_adain_layers."""
        return self.img_size // 2**self.n_adain_layers

    @property
    def enc_n_downsamplings(self) -> int:
        return len(self.enc_conv_dims) - 1

    @property
    def enc_out_size(self) -> int:
        """Side of the encoders' last conv map."""
        return self.img_size // 2**self.enc_n_downsamplings

    @property
    def enc_flat_dim(self) -> int:
        """Input width of the encoders' first fc layer (4096 at the reference's 64 px)."""
        return self.enc_conv_dims[-1] * self.enc_out_size**2


@dataclass
class LatentTrainConfig:
    """Stage 1: latent optimization of per-image content codes, class codes and the generator."""

    batch_size: int = 128
    n_epochs: int = 200
    lr_latent: float = 3e-3  # content and class embeddings
    lr_generator: float = 3e-4  # generator and modulation
    lr_min: float = 1e-5  # cosine decay per step down to this
    betas: tuple[float, float] = (0.5, 0.999)
    content_decay: float = 1e-4  # weight of mean ||noisy content code||^2
    content_init: float = 0.05  # content codes start uniform(-content_init, content_init)
    # > 0: content codes start as the principal components of what differs within each class, each
    # dimension scaled to this std (lordkit.training.init); 0: the uniform start above, as the paper.
    pca_init: float = 0.0
    # "deviation" (|image - class median|, colour-blind), "colour" (deviation plus each image's hue,
    # where hue varies within classes) or "signed" (image - class mean)
    pca_features: str = "deviation"
    # > 0: the feature maps are blurred (Gaussian, std = this fraction of the image side) before the fit,
    # so that thin or hollow shapes of different classes at one place and size overlap (their outlines
    # barely share a pixel); 0: not blurred.
    pca_blur: float = 0.0
    # > 0: weight of a term that pulls each class's content codes towards one shared mean and
    # covariance (lordkit.losses.class_moment_penalty); 0: off, as the paper.
    class_moments: float = 0.0
    # > 0: weight of a term that asks each output for its training image's hue direction (opponent
    # chroma over its size, lordkit.losses.hue_penalty), so that thin coloured shapes are not drawn
    # grey; RGB images only (skipped on one channel); 0: off, as the paper.
    hue_weight: float = 0.0
    loss: str = "vgg"  # "vgg" (pixel L1 + VGG16 features), or no network: "l1", "l2", "l1+l2", "lap1" (pyramid)
    noise_warmup_epochs: float = 0.0  # content noise std ramps 0 -> content_std over this; 0 = paper
    seed: int = 0
    log_every: int = 50  # steps between host reads of the loss
    sample_every_epochs: int = 1
    # Collapse detection (lordkit.collapse), at every sample grid: the output's variation with the content
    # code (and with the class) over the data's own; below the threshold after the warm-up fraction of the
    # epochs = collapsed.
    collapse_threshold: float = 0.005  # 0 turns detection off
    collapse_warmup: float = 0.2  # fraction of n_epochs before a low ratio counts
    stop_on_collapse: bool = False  # stop with an error (exit 2, checkpoint kept) instead of a warning
    # What --time-budget fitted (lordkit.training.budget): timings, epochs, expected end; {} without one.
    # n_epochs, noise_warmup_epochs and sample_every_epochs above already hold the fitted values.
    plan: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_stage(self, "latent")
        _require(self.content_decay >= 0, f"latent.content_decay must be >= 0, got {self.content_decay}")
        _require(self.content_init > 0, f"latent.content_init must be > 0, got {self.content_init}")
        _require(0 <= self.pca_init <= 100, f"latent.pca_init must be in [0, 100] (a std; 1 in the small preset), "
                 f"got {self.pca_init}")
        _require(0 <= self.class_moments < math.inf,
                 f"latent.class_moments must be a finite number >= 0, got {self.class_moments}")
        _require(0 <= self.hue_weight < math.inf,
                 f"latent.hue_weight must be a finite number >= 0, got {self.hue_weight}")
        _require(0 <= self.pca_blur <= 0.5, f"latent.pca_blur must be in [0, 0.5] (a fraction of the image side), "
                 f"got {self.pca_blur}")
        _require(self.pca_features in PCA_FEATURES,
                 f"latent.pca_features must be one of {', '.join(PCA_FEATURES)}, got {self.pca_features!r}")
        _require(self.pca_init > 0 or self.pca_blur == 0,
                 f"latent.pca_blur={self.pca_blur} blurs the start codes' features, which latent.pca_init=0 "
                 f"turns off: set latent.pca_init too (1 in the small preset)")
        _require(self.pca_init > 0 or self.pca_features == "deviation",
                 f"latent.pca_features={self.pca_features} shapes the start codes from the data, which "
                 f"latent.pca_init=0 turns off: set latent.pca_init too (1 in the small preset)")
        _require(self.noise_warmup_epochs >= 0,
                 f"latent.noise_warmup_epochs must be >= 0, got {self.noise_warmup_epochs}")
        _require(self.sample_every_epochs >= 1,
                 f"latent.sample_every_epochs must be >= 1, got {self.sample_every_epochs}")
        _check_finite(self, "latent")


@dataclass
class AmortizedTrainConfig:
    """Stage 2: content and class encoders regress the stage-1 codes; the generator is fine-tuned."""

    batch_size: int = 128
    n_epochs: int = 200
    lr: float = 1e-4
    lr_min: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.999)
    loss: str = "vgg"
    content_weight: float = 10.0  # weight of MSE(content_encoder(img), stage-1 content code)
    class_weight: float = 10.0  # weight of MSE(class_encoder(img), stage-1 class code)
    # Class swap: each step the frozen stage-1 generator also draws the batch's content codes in random
    # classes, and the encoders are asked for both codes back from those images (the two terms above,
    # times this weight; 0 = off): the content encoder sees every content in every class.
    swap_weight: float = 0.0
    # Subtract the training images' mean colour from the encoders' inputs (model.encoder_input_mean, set
    # when the stage starts). Without it a class encoder fed thin strokes on a mid-grey or light
    # background regressed every image to the mean class code for the whole stage (training-recipes.md).
    centre_inputs: bool = False
    seed: int = 0
    log_every: int = 50
    collapse_threshold: float = 0.005  # as latent.collapse_threshold, probed through the encoders
    collapse_warmup: float = 0.2
    stop_on_collapse: bool = False
    plan: dict[str, Any] = field(default_factory=dict)  # as latent.plan: what --time-budget fitted

    def __post_init__(self) -> None:
        _check_stage(self, "amortized")
        _require(all(math.isfinite(w) and w >= 0 for w in (self.content_weight, self.class_weight, self.swap_weight)),
                 "amortized.content_weight, class_weight and swap_weight must be finite and >= 0, "
                 f"got {self.content_weight}, {self.class_weight}, {self.swap_weight}")
        _check_finite(self, "amortized")


def _check_finite(cfg: Any, section: str) -> None:
    """Every number of a section finite: an infinite or NaN rate, weight or std would only show up as a
    NaN loss after training started (run after the section's own checks, whose messages come first)."""
    for name, tp in _field_types(type(cfg)).items():
        values = getattr(cfg, name) if _tuple_item_type(tp) is float else (getattr(cfg, name),) if tp is float else ()
        _require(all(math.isfinite(v) for v in values), f"{section}.{name} must be a finite number, got {getattr(cfg, name)}")


def _check_stage(cfg: Any, section: str) -> None:
    cfg.betas = tuple(cfg.betas)
    _require(cfg.batch_size >= 1, f"{section}.batch_size must be >= 1, got {cfg.batch_size}")
    _require(cfg.n_epochs >= 0, f"{section}.n_epochs must be >= 0, got {cfg.n_epochs}")
    _require(cfg.lr_min >= 0, f"{section}.lr_min must be >= 0, got {cfg.lr_min}")
    _require(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas),
             f"{section}.betas must be two numbers in [0, 1), got {cfg.betas}")
    _require(cfg.loss in LOSSES, f"{section}.loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    _require(cfg.log_every >= 1, f"{section}.log_every must be >= 1, got {cfg.log_every}")
    _require(cfg.collapse_threshold >= 0, f"{section}.collapse_threshold must be >= 0, got {cfg.collapse_threshold}")
    _require(0 <= cfg.collapse_warmup <= 1,
             f"{section}.collapse_warmup must be a fraction of the epochs in [0, 1], got {cfg.collapse_warmup}")
    _require(isinstance(cfg.plan, dict), f"{section}.plan must be an object, got {cfg.plan!r}")
    steps = cfg.plan.get("total_steps", 1) if isinstance(cfg.plan, dict) else 1
    _require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
             f"{section}.plan.total_steps must be a whole number >= 1, got {steps!r}")


SECTIONS = {"model": ModelConfig, "latent": LatentTrainConfig, "amortized": AmortizedTrainConfig}


@dataclass
class LordConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    latent: LatentTrainConfig = field(default_factory=LatentTrainConfig)
    amortized: AmortizedTrainConfig = field(default_factory=AmortizedTrainConfig)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> "LordConfig":
        """Inverse of to_json. Missing keys take defaults; unknown keys or wrong types raise ConfigError."""
        _require(isinstance(obj, dict), f"config must be a JSON object, got {type(obj).__name__}")
        unknown = [k for k in obj if k not in SECTIONS]
        if unknown:
            raise ConfigError(f"unknown config section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
        sections = {}
        for name, section_cls in SECTIONS.items():
            raw = obj.get(name, {})
            _require(isinstance(raw, dict), f"config section {name!r} must be an object")
            hints = _field_types(section_cls)
            kwargs = {}
            for key, value in raw.items():
                _require(key in hints, f"unknown config key {name}.{key} (known: {', '.join(hints)})")
                kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
            sections[name] = section_cls(**kwargs)
        return cls(**sections)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LordConfig":
        obj = read_json(Path(path), "config")
        try:
            return cls.from_json(obj)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def replace(self, **sections: dict[str, Any]) -> "LordConfig":
        """A new config with typed field values changed per section, validated like a loaded one:
        cfg.replace(model={"n_imgs": 480}, latent={"n_epochs": 10})."""
        unknown = [k for k in sections if k not in SECTIONS]
        _require(not unknown, f"unknown config section {unknown[0] if unknown else ''!r} (known: {', '.join(SECTIONS)})")
        new = {}
        for name in SECTIONS:
            current = getattr(self, name)
            changes = sections.get(name) or {}
            hints = _field_types(SECTIONS[name])
            bad = [k for k in changes if k not in hints]
            _require(not bad, f"unknown config key {name}.{bad[0] if bad else ''} (known: {', '.join(hints)})")
            new[name] = dataclasses.replace(current, **changes) if changes else current
        return LordConfig(**new)

    def apply_overrides(self, overrides: Sequence[str]) -> "LordConfig":
        """A new config with `section.field=value` overrides applied, values parsed by field type.

        Tuples are comma-separated ("latent.betas=0.5,0.999"); bools accept true/false/1/0/yes/no.
        """
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        given = set()
        for item in overrides:
            key, sep, text = item.partition("=")
            key = key.strip()
            given.add(key)
            section, dot, name = key.partition(".")
            _require(sep == "=" and dot == ".", f"override {item!r} must look like section.field=value")
            _require(section in SECTIONS,
                     f"unknown config section {section!r} in override {item!r} (known: {', '.join(SECTIONS)})")
            hints = _field_types(SECTIONS[section])
            _require(name in hints, f"unknown config key {key} (known: {', '.join(hints)})")
            sections[section][name] = _parse(text.strip(), hints[name], key)
        # The uniform start (latent.pca_init=0) takes no start-code form: a form that came with the
        # preset is dropped; one asked for beside it is refused (LatentTrainConfig's check).
        latent = sections["latent"]
        if "latent.pca_init" in given and "latent.pca_features" not in given and latent["pca_init"] == 0:
            latent["pca_features"] = "deviation"
        return LordConfig(**{name: SECTIONS[name](**kw) for name, kw in sections.items()})


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _tuple_item_type(tp: Any) -> Any | None:
    """The element type of tuple[X, ...] / tuple[X, X], else None."""
    if typing.get_origin(tp) is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return args[0] if args else Any
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check a JSON value against a field type (int stays int, int -> float is allowed)."""
    item = _tuple_item_type(tp)
    if item is not None:
        _require(isinstance(value, (list, tuple)), f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, item, key) for v in value)
    if typing.get_origin(tp) is dict:
        _require(isinstance(value, dict), f"{key} must be an object, got {value!r}")
    elif tp is bool:
        _require(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
    elif tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer, got {value!r}")
    elif tp is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool),
                 f"{key} must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        _require(isinstance(value, str), f"{key} must be a string, got {value!r}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse(text: str, tp: Any, key: str) -> Any:
    """Parse an override's text by the field's type."""
    if typing.get_origin(tp) is dict:
        raise ConfigError(f"{key} is written by --time-budget and cannot be set")
    item = _tuple_item_type(tp)
    if item is not None:
        parts = [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse(p, item, key) for p in parts)
    try:
        if tp is bool:
            low = text.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"cannot parse {text!r} as {tp.__name__} for {key}") from None
    return text


# The smallest model that runs every code path: tests, smoke runs of the benchmarks, `demo --quick`.
# n_adain_layers grows with img_size where needed (ModelConfig.min_adain_layers).
TINY_MODEL: dict[str, Any] = dict(content_dim=8, class_dim=8, n_adain_layers=2, adain_dim=16, gen_last_dim=8,
                                  enc_conv_dims=(8, 16, 16), enc_fc_dim=32)


def tiny_model(img_size: int = 32, channels: int = 3, **fields: Any) -> ModelConfig:
    """TINY_MODEL at an image size (enough AdaIN layers for it), with other fields as given."""
    n_adain = max(TINY_MODEL["n_adain_layers"], ModelConfig.min_adain_layers(img_size))
    return ModelConfig(**{**TINY_MODEL, "n_adain_layers": n_adain, "img_size": img_size, "channels": channels,
                          **fields})


# Presets: overrides of the defaults, by section. The reference used the same model for every dataset
# (content_dim 128, class_dim 256, 4 AdaIN layers of 256); the paper's datasets keep those.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Small datasets on a CPU or offline (docs/training-recipes.md has every measurement): a small
    # model; content codes that start as the images' principal components within their class
    # (informative from step 0), with a hue pair where hue varies within the classes (pca_features
    # "colour"); an output margin that keeps the generator's sigmoid trainable on images that are
    # mostly background (without it, stage 1 can end with a black image for every code); an L1 loss on
    # a Laplacian pyramid of the images (lap1: edges weigh as much as flat areas); learning rates 3x
    # (generator) and 10x (codes) the reference's; content noise std 0.5 ramped up over the first third
    # of stage 1; batch 16 (more steps: each content code is updated once per epoch); in stage 2 the
    # class swap (swap_weight) and encoders that read each image less the training images' mean colour
    # (centre_inputs: on grey or light backgrounds a class encoder otherwise learnt nothing in time).
    "small": {
        "model": dict(img_size=32, content_dim=8, class_dim=16, content_std=0.5, n_adain_layers=3, adain_dim=32,
                      gen_last_dim=16, enc_conv_dims=(16, 32, 64, 64), enc_fc_dim=64, output_margin=0.01),
        "latent": dict(batch_size=16, n_epochs=300, loss="lap1", lr_generator=1e-3, lr_latent=3e-2,
                       noise_warmup_epochs=100.0, pca_init=1.0, pca_features="colour", sample_every_epochs=10),
        "amortized": dict(batch_size=16, n_epochs=120, loss="lap1", lr=1e-3, swap_weight=4.0, centre_inputs=True),
    },
}
# A preset's length in training images seen per stage, where it has one: its n_epochs above are those
# of LENGTH_REFERENCE_IMAGES images (the demo's training split), and a training set of n images gets the
# epochs that show the same number of images (lordkit train, lordkit demo), so that a stage costs the
# same steps whatever the number of images. Its schedule (noise warm-up, sample cadence) keeps its share
# of the run. Presets without an entry count in epochs. docs/training-recipes.md has the measurements.
LENGTH_REFERENCE_IMAGES = 384
PRESET_IMAGES_SEEN: dict[str, dict[str, int]] = {
    "small": {"latent": 300 * LENGTH_REFERENCE_IMAGES, "amortized": 120 * LENGTH_REFERENCE_IMAGES},
}
ALIASES = {"synthetic": "small"}  # the generated shapes set trains with the small-data recipe
SMALL_DATA_IMAGES = 20_000  # the user's own images (folder reader): fewer start from "small"
OWN_DATA_READERS = ("folder",)


def preset_name(name: str) -> str:
    """The preset a name stands for (aliases resolved)."""
    return ALIASES.get(name, name)


def preset(dataset_id: str, known: Sequence[str] | None = None) -> LordConfig:
    """The starting config for a dataset: its PRESETS entry (through ALIASES), else the reference defaults.

    known: the names accepted besides PRESETS' and ALIASES' (the dataset ids); any other name is
    refused, so a typo never trains the full-size model silently. None accepts any name."""
    name = preset_name(dataset_id)
    if known is not None and name not in PRESETS and dataset_id not in known:
        names = sorted(set(PRESETS) | set(ALIASES) | set(known))
        raise ConfigError(f"unknown preset {dataset_id!r}; choose from {', '.join(names)}")
    entry = PRESETS.get(name, {})
    return LordConfig(**{name: SECTIONS[name](**entry.get(name, {})) for name in SECTIONS})


def fit_to_images(cfg: LordConfig, img_size: int, channels: int) -> LordConfig:
    """A preset's config at the data's image size and channels: the generator gets the AdaIN layers
    (2x upsamplings) that size needs when the preset has too few."""
    n_adain = max(cfg.model.n_adain_layers, ModelConfig.min_adain_layers(img_size))
    return cfg.replace(model={"img_size": img_size, "channels": channels, "n_adain_layers": n_adain})


def epoch_schedule(stage: str, section: Any, n_epochs: int) -> dict[str, Any]:
    """The epoch-counted fields of a stage's section at n_epochs, each keeping its share of the
    configured run: the content-noise warm-up and the sample-grid cadence of stage 1 scale with it (the
    learning-rate decay and the collapse warm-up are fractions of the run already)."""
    n0 = max(int(section.n_epochs), 1)
    if stage != "latent":
        return {"n_epochs": n_epochs}
    return {"n_epochs": n_epochs,
            "noise_warmup_epochs": section.noise_warmup_epochs * n_epochs / n0,
            "sample_every_epochs": max(1, round(section.sample_every_epochs * n_epochs / n0))}


def fit_to_length(cfg: LordConfig, preset_name_: str, n_imgs: int) -> tuple[LordConfig, str | None]:
    """A preset's config with the epochs that show its PRESET_IMAGES_SEEN on a training set of n_imgs
    images (at least one epoch), and a line saying so; unchanged (and None) for presets counted in
    epochs. Apply before the user's --set and --epochs, which then win."""
    seen = PRESET_IMAGES_SEEN.get(preset_name(preset_name_))
    if not seen or n_imgs <= 0:
        return cfg, None
    e1 = max(1, round(seen["latent"] / n_imgs))
    e2 = max(1, round(seen["amortized"] / n_imgs))
    cfg = cfg.replace(latent=epoch_schedule("latent", cfg.latent, e1),
                      amortized=epoch_schedule("amortized", cfg.amortized, e2))
    return cfg, (f"length: {seen['latent']:,} + {seen['amortized']:,} images seen; {e1} + {e2} epochs of "
                 f"{n_imgs:,} images")


def choose_preset(dataset_id: str, n_imgs: int, explicit: str | None = None,
                  known: Sequence[str] | None = None) -> tuple[str, LordConfig, str]:
    """(preset name, its config, why it was chosen) for training on a dataset of n_imgs images read by
    dataset_id: --preset when given; else the dataset's own preset; the user's own images (folder)
    under SMALL_DATA_IMAGES start from "small"; everything else from the paper's settings."""
    if explicit is not None:
        cfg = preset(explicit, known=known)
        name = preset_name(explicit)
        alias = f" ({explicit} is an alias)" if name != explicit else ""
        return name, cfg, f"preset {name}: chosen with --preset{alias}"
    name = preset_name(dataset_id)
    if name in PRESETS:
        return name, preset(name), f"preset {name}: the preset of {dataset_id} data"
    if dataset_id in OWN_DATA_READERS and n_imgs < SMALL_DATA_IMAGES:
        return "small", preset("small"), (f"preset small: {n_imgs:,} images of {dataset_id} data, fewer than "
                                          f"{SMALL_DATA_IMAGES:,} (--preset {dataset_id} for the paper's settings)")
    why = (f"{n_imgs:,} images of {dataset_id} data" if dataset_id in OWN_DATA_READERS
           else f"the {dataset_id} dataset")
    return dataset_id, preset(dataset_id), f"preset {dataset_id}: the paper's settings for {why}"
