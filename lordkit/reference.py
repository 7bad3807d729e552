"""Import model dirs written by the public PyTorch re-implementation of LORD.

Such a dir holds config.pkl (a pickled dict), latent.pth and, after stage 2, amortized.pth
(torch.save'd state dicts). The pickle is read by `RestrictedUnpickler`, which refuses to look up
any global: the reference's config is a dict of ints, floats, strings, lists, tuples and dicts
(img_shape is a tuple of Python ints and n_classes is `.item()`'d), none of which need a global
to unpickle, so nothing is allowed at all, numpy scalars included. The state dicts are read with
torch.load(weights_only=True).
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lordkit.config import AmortizedTrainConfig, ConfigError, LatentTrainConfig, LordConfig, ModelConfig
from lordkit.errors import LordkitError
from lordkit.models import AmortizedModel, LatentModel

MAX_CONFIG_BYTES = 1 << 20  # a reference config.pkl is a few hundred bytes


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every global lookup (class, function, numpy type) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only plain values are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids")


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def read_reference_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LordkitError(f"reference config not found: {path}")
    data = path.read_bytes()
    if len(data) > MAX_CONFIG_BYTES:
        raise LordkitError(f"{path} is too large for a reference config ({len(data)} bytes)")
    try:
        obj = restricted_loads(data)
    except Exception as e:  # refused global, truncated or not a pickle
        raise LordkitError(f"cannot read reference config {path}: {e}") from None
    if not isinstance(obj, dict):
        raise LordkitError(f"reference config {path} is not a dict but {type(obj).__name__}")
    return obj


def _get(cfg: dict[str, Any], *keys: str, default: Any = None, required: bool = True) -> Any:
    node: Any = cfg
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            if required:
                raise LordkitError(f"reference config has no {'.'.join(keys)}")
            return default
        node = node[k]
    return node


def config_from_reference(ref: dict[str, Any]) -> LordConfig:
    """Map the reference's config dict to a LordConfig (reference defaults where a key is absent)."""
    shape = _get(ref, "img_shape")
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and shape[0] == shape[1]):
        raise LordkitError(f"reference img_shape must be (size, size, channels), got {shape!r}")
    model_d, latent_d, amort_d = ModelConfig(), LatentTrainConfig(), AmortizedTrainConfig()
    try:
        model = ModelConfig(
            img_size=int(shape[0]),
            channels=int(shape[2]),
            n_imgs=int(_get(ref, "n_imgs")),
            n_classes=int(_get(ref, "n_classes")),
            content_dim=int(_get(ref, "content_dim")),
            class_dim=int(_get(ref, "class_dim")),
            content_std=float(_get(ref, "content_std", default=model_d.content_std, required=False)),
            n_adain_layers=int(_get(ref, "n_adain_layers")),
            adain_dim=int(_get(ref, "adain_dim")),
        )
        latent = LatentTrainConfig(
            batch_size=int(_get(ref, "train", "batch_size", default=latent_d.batch_size, required=False)),
            n_epochs=int(_get(ref, "train", "n_epochs", default=latent_d.n_epochs, required=False)),
            lr_latent=float(_get(ref, "train", "learning_rate", "latent", default=latent_d.lr_latent, required=False)),
            lr_generator=float(_get(ref, "train", "learning_rate", "generator",
                                    default=latent_d.lr_generator, required=False)),
            lr_min=float(_get(ref, "train", "learning_rate", "min", default=latent_d.lr_min, required=False)),
            content_decay=float(_get(ref, "content_decay", default=latent_d.content_decay, required=False)),
            loss="vgg",
        )
        amortized = AmortizedTrainConfig(
            batch_size=int(_get(ref, "train_encoders", "batch_size", default=amort_d.batch_size, required=False)),
            n_epochs=int(_get(ref, "train_encoders", "n_epochs", default=amort_d.n_epochs, required=False)),
            lr=float(_get(ref, "train_encoders", "learning_rate", "max", default=amort_d.lr, required=False)),
            lr_min=float(_get(ref, "train_encoders", "learning_rate", "min", default=amort_d.lr_min, required=False)),
            loss="vgg",
        )
    except ConfigError as e:
        raise LordkitError(f"reference config is not supported by lordkit: {e}") from None
    except (TypeError, ValueError) as e:
        raise LordkitError(f"reference config has a value of the wrong type: {e}") from None
    return LordConfig(model=model, latent=latent, amortized=amortized)


_ADAIN_CONV_RE = re.compile(r"^generator\.adain_conv_layers\.(\d+)\.(weight|bias)$")


def map_reference_key(key: str) -> str:
    """Reference state-dict key -> lordkit key. Only the AdaIN conv blocks are laid out differently:
    the reference's Sequential [Upsample, Conv, LeakyReLU, AdaIN] * L puts conv i at index 4i+1."""
    m = _ADAIN_CONV_RE.match(key)
    if m is None:
        return key
    idx = int(m.group(1))
    if idx % 4 != 1:
        raise LordkitError(f"unexpected reference key {key}: AdaIN conv layers sit at indices 4i+1")
    return f"generator.adain_conv_layers.{idx // 4}.conv.{m.group(2)}"


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LordkitError(f"cannot read reference weights {path}: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise LordkitError(f"reference weights {path} are not a state dict of tensors")
    return state


def convert_state_dict(state: dict[str, Tensor], own: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename the reference's keys to lordkit's and check every key and shape against `own`."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = map_reference_key(key)
        if new not in own:
            raise LordkitError(f"{source}: unexpected key {key} (not a LORD model of this config)")
        if tuple(value.shape) != tuple(own[new].shape):
            raise LordkitError(f"{source}: {key} has shape {tuple(value.shape)}, the config implies "
                               f"{tuple(own[new].shape)}")
        out[new] = value.detach().to(torch.float32).contiguous()
    missing = [k for k in own if k not in out]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LordkitError(f"{source}: missing {missing[0]}{more}")
    return out


def import_reference(src_dir: str | os.PathLike) -> tuple[LordConfig, dict[str, Tensor], dict[str, Tensor] | None]:
    """Read a reference model dir: (config, latent state dict, amortized state dict or None),
    with lordkit key names, ready for LatentModel / AmortizedModel.load_state_dict."""
    src = Path(src_dir)
    if not src.is_dir():
        raise LordkitError(f"reference model dir not found: {src}")
    config = config_from_reference(read_reference_config(src / "config.pkl"))
    latent_path = src / "latent.pth"
    if not latent_path.is_file():
        raise LordkitError(f"reference model dir {src} has no latent.pth")
    with torch.device("meta"):  # shapes only: no memory for the (possibly large) content table
        latent_own, amortized_own = LatentModel(config.model).state_dict(), AmortizedModel(config.model).state_dict()
    latent = convert_state_dict(_read_state(latent_path), latent_own, str(latent_path))
    amortized = None
    amortized_path = src / "amortized.pth"
    if amortized_path.is_file():
        amortized = convert_state_dict(_read_state(amortized_path), amortized_own, str(amortized_path))
    return config, latent, amortized
