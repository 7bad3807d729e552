"""Import model dirs written by the public PyTorch re-implementation of LORD.

Such a dir holds config.pkl (a pickled dict), latent.pth and, after stage 2, amortized.pth
(torch.save'd state dicts). The pickle is read by `RestrictedUnpickler`, which refuses to look up
any global: the reference's config is a dict of ints, floats, strings, lists, tuples and dicts
(img_shape is a tuple of Python ints and n_classes is `.item()`'d), none of which need a global
to unpickle, so nothing is allowed at all, numpy scalars included. The state dicts are read with
torch.load(weights_only=True): a file that holds anything but tensors is refused, never run.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lordkit.config import AmortizedTrainConfig, ConfigError, LatentTrainConfig, LordConfig, ModelConfig
from lordkit.errors import LordkitError
from lordkit.models import AmortizedModel, LatentModel

MAX_CONFIG_BYTES = 1 << 20  # a reference config.pkl is a few hundred bytes
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format starts with a protocol-2 pickle
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every global lookup (class, function, numpy type) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only plain values are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids")


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise LordkitError(f"{what} not found: {path}")
    if path.is_dir():
        raise LordkitError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise LordkitError(f"{what} {path} is not a regular file")


def _read_head(path: Path, n_bytes: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n_bytes)
    except OSError as e:
        raise LordkitError(f"cannot read {what} {path}: {e.strerror or type(e).__name__}") from None


def read_reference_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    _check_file(path, "reference config")
    data = _read_head(path, MAX_CONFIG_BYTES + 1, "reference config")
    if len(data) > MAX_CONFIG_BYTES:
        raise LordkitError(f"{path} is too large for a reference config (over {MAX_CONFIG_BYTES} bytes)")
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


def _load_error(e: Exception) -> str:
    """Why torch.load refused a file, in words that fit a file nobody should unpickle."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "weights only" in text.lower():
        found = _GLOBAL_RE.search(text)  # absent when torch stops at an opcode before any global
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects that are not plain tensors{what}; refused for safety"
    if "zip archive" in text or "central directory" in text:
        return "a damaged or truncated zip archive"
    first = (text.strip().splitlines() or [""])[0]
    return f"damaged or not a PyTorch checkpoint ({type(e).__name__}{': ' + first[:120] if first else ''})"


def _read_state(path: Path) -> dict[str, Tensor]:
    what = "reference weights"
    _check_file(path, what)
    head = _read_head(path, len(ZIP_MAGIC), what)
    if not head:
        raise LordkitError(f"{what} {path} is empty")
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        raise LordkitError(f"{what} {path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        # torch warns on pickle features it does not read (and suggests weights_only=False, the one
        # thing never to do with a file like this); the refusal below says what matters.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise LordkitError(f"cannot read {what} {path}: {e.strerror or type(e).__name__}") from None
    except Exception as e:  # torch raises its own types, pickle's and zip's for damaged or hostile files
        raise LordkitError(f"cannot read {what} {path}: {_load_error(e)}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise LordkitError(f"{what} {path} are not a state dict of named tensors")
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
        if value.is_meta or value.layout != torch.strided:
            raise LordkitError(f"{source}: {key} is not a dense tensor with data ({value.layout}, "
                               f"{value.device.type}); weights must be")
        if not value.is_floating_point():
            raise LordkitError(f"{source}: {key} has dtype {str(value.dtype).removeprefix('torch.')}; "
                               "weights are floating-point")
        if not bool(torch.isfinite(value).all()):
            raise LordkitError(f"{source}: {key} holds NaN or infinite values")
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
    if not src.exists():
        raise LordkitError(f"reference model dir not found: {src}")
    if not src.is_dir():
        raise LordkitError(f"{src} is a file; pass the reference model dir (config.pkl, latent.pth, amortized.pth)")
    config = config_from_reference(read_reference_config(src / "config.pkl"))
    latent_path = src / "latent.pth"
    if not os.path.lexists(latent_path):
        raise LordkitError(f"reference model dir {src} has no latent.pth")
    with torch.device("meta"):  # shapes only: no memory for the (possibly large) content table
        latent_own, amortized_own = LatentModel(config.model).state_dict(), AmortizedModel(config.model).state_dict()
    latent = convert_state_dict(_read_state(latent_path), latent_own, str(latent_path))
    amortized = None
    amortized_path = src / "amortized.pth"
    if os.path.lexists(amortized_path):  # absent: stage 1 only; present but unreadable: an error
        amortized = convert_state_dict(_read_state(amortized_path), amortized_own, str(amortized_path))
    return config, latent, amortized
