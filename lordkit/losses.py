"""Reconstruction losses: pixel L1, and pixel L1 plus L1 distances of frozen ImageNet VGG16 features.

Feature layers: torchvision vgg16 `features` indices 2, 7, 12, 21, 30 as the reference lists them,
taken after their ReLU: relu1_2, relu2_2, relu3_2, relu4_3 and pool5. The reference appends the
conv output at those indices and the following in-place ReLU of torchvision's VGG then rectifies the
stored tensor, so what it actually compares is the post-ReLU activation (and the Keras original
uses the same layers with their built-in ReLU). Unlike the reference, VGG is frozen and its inputs
are ImageNet-normalised.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from lordkit.errors import LordkitError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = "vgg16-397923af.pth"
VGG16_HASH_PREFIX = "397923af"  # first hex digits of the file's sha256, as torch.hub checks
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision vgg16 `features`: channels of each 3x3 conv, "M" = 2x2 max-pool. Each conv is followed
# by a ReLU, so the convs sit at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 and the pools
# at 4, 9, 16, 23, 30.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG_LAYERS = (2, 7, 12, 21, 30)  # the reference's layer ids; outputs are read after their ReLU
_VGG_TAPS = (3, 8, 13, 22, 30)  # index of the module whose output is read: the ReLU after a conv, or pool5


class VGG16Features(nn.Module):
    """Frozen VGG16 `features` (state-dict keys features.N.weight/bias, as torchvision's).

    forward(x) with x (B, 3, H, W) already ImageNet-normalised -> 5 feature maps at VGG_LAYERS.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG16Features":
        return super().train(False)  # always eval: frozen feature extractor

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "VGG16Features":
        """Load torchvision-format weights (.pth via torch.load(weights_only=True), or .safetensors)."""
        model = cls()
        model.load_torchvision_state_dict(load_state_dict_file(path, "VGG16 weights"), source=str(path))
        return model

    def load_torchvision_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Copy features.N.* tensors; classifier.* and other keys are ignored; missing keys fail."""
        own = self.state_dict()
        for key, param in own.items():
            if key not in state:
                raise LordkitError(f"{source} is not a torchvision VGG16 state dict: missing {key}")
            if tuple(state[key].shape) != tuple(param.shape):
                raise LordkitError(
                    f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}")
        self.load_state_dict({k: state[k].float() for k in own})

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        outs: list[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                outs.append(x)
        return outs[0], outs[1], outs[2], outs[3], outs[4]


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """A tensor dict from .safetensors or a torch.save file (never unpickling arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise LordkitError(f"{what} not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: one line, no traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LordkitError(f"cannot read {what} {path}: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise LordkitError(f"{what} {path} is not a state dict of tensors")
    return state


def torch_hub_dir() -> Path:
    """torch.hub's directory: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        torch_home = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def vgg_cache_path() -> Path:
    return torch_hub_dir() / "checkpoints" / VGG16_FILE


def offline() -> bool:
    return os.environ.get("LORDKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_vgg(url: str, dst: Path, timeout_s: float = 10.0) -> bool:
    """Download `url` to `dst` (temporary name, sha256 prefix check, rename). False on any network error."""
    from lordkit.console import make_progress  # rich; only needed when downloading
    from lordkit.fsutil import atomic_open

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            digest = hashlib.sha256()
            with atomic_open(dst, "wb") as f, make_progress(transient=True) as progress:
                task = progress.add_task("download VGG16", total=(total / 2**20) or None, unit="MB")
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk) / 2**20)
                if not digest.hexdigest().startswith(VGG16_HASH_PREFIX):
                    raise ValueError("hash mismatch")
        return True
    except (OSError, urllib.error.URLError, ValueError):  # offline, timeout, refused, truncated, bad hash
        return False


def find_vgg_weights(explicit: str | os.PathLike | None = None,
                     download: Callable[[str, Path], bool] | None = download_vgg) -> Path:
    """Where the VGG16 weights are: `explicit`, else torch.hub's cache, else downloaded there.

    No download is tried when `download` is None or LORDKIT_OFFLINE=1. Raises a one-line
    LordkitError saying how to get the file when none is available.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LordkitError(f"VGG16 weights not found: {path} (or choose --loss l1)")
        return path
    cached = vgg_cache_path()
    if cached.is_file():
        return cached
    if download is not None and not offline() and download(VGG16_URL, cached) and cached.is_file():
        return cached
    raise LordkitError(
        f"VGG16 weights are not available: download {VGG16_URL} to {cached}, "
        "or pass --vgg-weights PATH, or choose --loss l1")


def _l1(a: Tensor, b: Tensor) -> Tensor:
    return (a.float() - b.float()).abs().mean()


class L1Loss(nn.Module):
    """Mean absolute pixel difference (computed in float32)."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return _l1(pred, target)


class L2Loss(nn.Module):
    """Mean squared pixel difference (computed in float32). Where most pixels are background, the
    squared error's best answer to an uncertain pixel is the mean, a faint object, where L1's is the
    median, the background: under L2 the generator keeps drawing what the codes do not yet pin down."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.float() - target.float()).pow(2).mean()


class L1L2Loss(nn.Module):
    """L1 plus squared error: L1's sharp edges, with L2's pull towards faint objects early on."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        d = pred.float() - target.float()
        return d.abs().mean() + d.pow(2).mean()


class LaplacianL1Loss(nn.Module):
    """L1 over the levels of a Laplacian pyramid, no pretrained network needed: each level's band
    (the image less its blurred, halved and re-enlarged self) and the last low-pass image, each
    compared by its mean L1 and the levels weighted equally. A stroke a pixel or two wide is its own
    band at the fine level, where a pixel loss weighs it by its few pixels; at the coarser levels a
    stroke drawn a little off its place still overlaps the true one and pulls it over. Levels halve
    the image until its short side would fall below MIN_SIDE px (at most MAX_LEVELS bands)."""

    MIN_SIDE = 4
    MAX_LEVELS = 4

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # binomial 5-tap: the classic pyramid kernel
        self.register_buffer("kernel", (taps[:, None] * taps[None, :])[None, None], persistent=False)

    def _blur(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        padded = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
        return nn.functional.conv2d(padded, self.kernel.to(x.dtype).expand(c, 1, 5, 5), groups=c)

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """The bands, finest first, then the low-pass image; upsampling each coarser level and adding
        the band back rebuilds the finer one exactly."""
        levels = []
        while len(levels) < self.MAX_LEVELS and min(x.shape[-2:]) // 2 >= self.MIN_SIDE:
            low = self._blur(x)[..., ::2, ::2]
            levels.append(x - self.expand(low, x.shape[-2:]))
            x = low
        return [*levels, x]

    @staticmethod
    def expand(low: Tensor, size: tuple[int, int]) -> Tensor:
        return nn.functional.interpolate(low, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        # In float32 under bf16 autocast too: a band is a small difference of two images, which the
        # blur's convolution in bf16 would round away.
        with torch.autocast(pred.device.type, enabled=False):
            pairs = zip(self.pyramid(pred.float()), self.pyramid(target.float()))
            return torch.stack([(a - b).abs().mean() for a, b in pairs]).sum()


class PerceptualLoss(nn.Module):
    """Pixel L1 + sum over the 5 VGG layers of the mean L1 between features of pred and target.

    Images (B, 1 or 3, H, W) in [0, 1]; grey images are repeated to 3 channels for VGG.
    """

    def __init__(self, vgg: VGG16Features):
        super().__init__()
        # Channels-last through VGG: oneDNN's and cuDNN's convolutions take it without reordering
        # every layer's input (1.4x the NCHW step on a 2-core CPU, 64 px, batch 16).
        self.vgg = vgg.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.vgg(x.contiguous(memory_format=torch.channels_last))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = _l1(pred, target)
        # The target's features need no gradient: computed apart, without autograd, the backward pass
        # runs through VGG for the prediction only (one pass over both, concatenated, sent the
        # gradient through the target's half as well: 1.1x the step on a 2-core CPU, docs/bench.md).
        with torch.no_grad():
            wanted = self._features(target.to(pred.dtype))
        for f, g in zip(self._features(pred), wanted):
            loss = loss + _l1(f, g)
        return loss


def make_loss(name: str, vgg_weights: str | os.PathLike | None = None,
              download: Callable[[str, Path], bool] | None = download_vgg) -> nn.Module:
    """"l1" -> L1Loss, "l2" -> L2Loss, "l1+l2" -> L1L2Loss, "lap1" -> LaplacianL1Loss; "vgg" ->
    PerceptualLoss on VGG16 weights found by find_vgg_weights."""
    if name == "l1":
        return L1Loss()
    if name == "l2":
        return L2Loss()
    if name == "l1+l2":
        return L1L2Loss()
    if name == "lap1":
        return LaplacianL1Loss()
    if name == "vgg":
        return PerceptualLoss(VGG16Features.from_file(find_vgg_weights(vgg_weights, download)))
    raise LordkitError(f"unknown loss {name!r}: choose vgg, l1, l2, l1+l2 or lap1")


def content_penalty(content_code: Tensor) -> Tensor:
    """Content decay term of stage 1: mean over the batch of the squared L2 norm of each code."""
    return content_code.float().pow(2).sum(dim=1).mean()


# Opponent colour axes (red-green, yellow-blue), unit length, each orthogonal to grey (1, 1, 1).
OPPONENT = ((2 ** -0.5, -(2 ** -0.5), 0.0), (6 ** -0.5, 6 ** -0.5, -2 * 6 ** -0.5))
# Added per pixel to the summed chroma size (0-1 scale): a nearly grey image gets a short hue direction.
CHROMA_FLOOR = 1e-3


def hue_direction(images: Tensor) -> Tensor:
    """(B, 2) for (B, 3, H, W) images in [0, 1]: each image's opponent chroma summed over its pixels
    and divided by the summed chroma size plus CHROMA_FLOOR per pixel, the mean hue direction of its
    coloured pixels (grey pixels add nothing), whatever the object's size, place or background grey.
    Also the hue pair of the start codes (lordkit.training.init.hue_pairs)."""
    x = images.to(torch.promote_types(images.dtype, torch.float32))  # float64 stays float64
    chroma = torch.einsum("bchw,kc->bkhw", x, torch.tensor(OPPONENT, dtype=x.dtype, device=x.device)).flatten(2)
    size = chroma.norm(dim=1).sum(dim=1) + CHROMA_FLOOR * chroma.shape[2]
    return chroma.sum(dim=2) / size[:, None]


def hue_penalty(out: Tensor, images: Tensor) -> Tensor:
    """Hue term of stage 1 (latent.hue_weight): mean over the batch of the L1 distance between the
    hue direction (hue_direction) of each output and of its training image. A reconstruction loss
    can let thin coloured shapes come out grey at a small cost per pixel; this term costs as much
    for a grey drawing of a thin outline as of a solid shape."""
    return (hue_direction(out) - hue_direction(images)).abs().sum(dim=1).mean()


MOMENT_REFERENCE_ROWS = 4096  # rows of the content table the class statistics are taken over, at most


def pooled_codes(live: Tensor, idx: Tensor, table: Tensor, class_ids: Tensor,
                 reference: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The codes class_moment_penalty compares (the table's rows, or `reference`'s, with the batch's
    rows replaced by `live`), their classes, their mean and covariance, and the covariance's mean
    variance (detached, at least 1e-8) that scales the term."""
    rows = torch.arange(len(table), device=table.device) if reference is None else reference
    keep = ~torch.isin(rows, idx)
    z = torch.cat([table[rows[keep]].detach().float(), live.float()])
    y = torch.cat([class_ids[rows[keep]], class_ids[idx]])
    mean = z.mean(0)
    centred = z - mean
    cov = centred.T @ centred / max(len(z) - 1, 1)
    return z, y, mean, cov, cov.diagonal().mean().detach().clamp_min(1e-8)


def class_moment_penalty(live: Tensor, idx: Tensor, table: Tensor, class_ids: Tensor,
                         reference: Tensor | None = None) -> Tensor:
    """How far the content codes of the batch's classes are from sharing one distribution: for each
    class in the batch, the squared distance of its codes' mean from the mean of all codes, plus the
    squared Frobenius distance of its covariance from theirs, averaged over the classes and divided
    by the codes' mean variance (and its square) so that the term does not fall by shrinking the codes.

    The statistics are taken over the table's rows (all of them, or `reference`, a sample of row
    numbers) with the batch's rows replaced by `live` (its clean codes, idx their rows); only the
    batch's codes get a gradient, so the rows outside the batch are not moved by this term."""
    z, y, mean, cov, scale = pooled_codes(live, idx, table, class_ids, reference)
    classes = torch.unique(class_ids[idx])
    ours = torch.isin(y, classes)  # only the batch classes' rows enter the per-class sums
    return class_gaps(z[ours], y[ours], classes, mean, cov, scale, like=live)


def class_gaps(z: Tensor, y: Tensor, classes: Tensor, mean: Tensor, cov: Tensor, scale: Tensor, *,
               like: Tensor) -> Tensor:
    """class_moment_penalty's value from pooled codes z (classes y): for each of `classes` with two
    codes or more, its mean's and covariance's squared distances from `mean` and `cov` over `scale`
    (and its square), averaged; a 0 like `like` where no class has two. Rows of other classes add
    nothing to the sums, only cost."""
    member = (y[:, None] == classes[None, :]).to(z.dtype)  # (N, K): which rows are of which class
    counts = member.sum(0)
    member, counts = member[:, counts >= 2], counts[counts >= 2]  # a covariance needs two codes
    if len(counts) == 0:
        return like.new_zeros(())
    means = member.T @ z / counts[:, None]  # (K, D)
    second = torch.einsum("nk,ni,nj->kij", member, z, z)  # (K, D, D): sums of z z^T per class
    covs = (second - counts[:, None, None] * means[:, :, None] * means[:, None, :]) / (counts[:, None, None] - 1)
    mean_gap = (means - mean).pow(2).sum(1) / scale
    cov_gap = (covs - cov).pow(2).sum((1, 2)) / scale ** 2
    return (mean_gap + cov_gap).mean()
