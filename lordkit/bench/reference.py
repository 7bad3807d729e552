"""The networks as the public PyTorch re-implementation of LORD writes them: the baseline rows of the
benchmarks (what users of that code run today) and the other side of the import parity tests.

Same module names and parameter layouts as the reference, and its arithmetic: NCHW float32, eager;
nearest upsampling through nn.Upsample; AdaIN as F.batch_norm in training mode on the activations
viewed as (1, B*C, H, W), its parameters assigned onto the AdaIN modules before each forward; the
content noise added whenever the embedding is in training mode. Weights load from a lordkit model
(`reference_amortized`, `reference_latent`) through lordkit.reference's key mapping, so both sides
of a benchmark compute the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lordkit.config import ModelConfig
from lordkit.losses import IMAGENET_MEAN, IMAGENET_STD, VGG16Features
from lordkit.models import AmortizedModel, LatentModel
from lordkit.reference import map_reference_key


class RefAdaIN(nn.Module):
    def __init__(self, index: int, eps: float = 1e-5):
        super().__init__()
        self.index, self.eps = index, eps
        self.weight: Tensor | None = None  # (B, C), assigned by the generator before each forward
        self.bias: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        out = F.batch_norm(x.contiguous().view(1, b * c, h, w), None, None, self.weight.reshape(-1),
                           self.bias.reshape(-1), training=True, momentum=0.1, eps=self.eps)
        return out.view(b, c, h, w)


class RefRegularizedEmbedding(nn.Module):
    def __init__(self, n: int, dim: int, stddev: float):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)
        self.stddev = stddev

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embedding(ids)
        if self.training and self.stddev != 0:
            x = x + torch.randn_like(x) * self.stddev
        return x


class RefModulation(nn.Module):
    def __init__(self, code_dim: int, n_layers: int, dim: int):
        super().__init__()
        self.n_layers, self.dim = n_layers, dim
        self.adain_per_layer = nn.ModuleList([nn.Linear(code_dim, dim * 2) for _ in range(n_layers)])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([f(x) for f in self.adain_per_layer], dim=-1).reshape(-1, self.n_layers, self.dim, 2)


class RefGenerator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.s, self.dim = cfg.gen_init_size, cfg.adain_dim
        area, d = self.s * self.s, cfg.adain_dim
        self.fc_layers = nn.Sequential(nn.Linear(cfg.content_dim, area * d // 8), nn.LeakyReLU(),
                                       nn.Linear(area * d // 8, area * d // 4), nn.LeakyReLU(),
                                       nn.Linear(area * d // 4, area * d), nn.LeakyReLU())
        blocks: list[nn.Module] = []
        for i in range(cfg.n_adain_layers):
            blocks += [nn.Upsample(scale_factor=(2, 2)), nn.Conv2d(d, d, 3, padding=1), nn.LeakyReLU(), RefAdaIN(i)]
        self.adain_conv_layers = nn.Sequential(*blocks)
        self.last_conv_layers = nn.Sequential(nn.Conv2d(d, cfg.gen_last_dim, 5, padding=2), nn.LeakyReLU(),
                                              nn.Conv2d(cfg.gen_last_dim, cfg.channels, 7, padding=3), nn.Sigmoid())

    def forward(self, content_code: Tensor, adain_params: Tensor) -> Tensor:
        for m in self.adain_conv_layers:
            if isinstance(m, RefAdaIN):
                m.bias, m.weight = adain_params[:, m.index, :, 0], adain_params[:, m.index, :, 1]
        x = self.fc_layers(content_code).reshape(-1, self.dim, self.s, self.s)
        return self.last_conv_layers(self.adain_conv_layers(x))


class RefEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        dims = cfg.enc_conv_dims
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, dims[0], 7, stride=1, padding=3), nn.LeakyReLU()]
        for c_in, c_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU()]
        self.conv_layers = nn.Sequential(*layers)
        self.fc_layers = nn.Sequential(nn.Linear(cfg.enc_flat_dim, cfg.enc_fc_dim), nn.LeakyReLU(),
                                       nn.Linear(cfg.enc_fc_dim, cfg.enc_fc_dim), nn.LeakyReLU(),
                                       nn.Linear(cfg.enc_fc_dim, code_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_layers(self.conv_layers(x).view(x.shape[0], -1))


class RefLatent(nn.Module):
    """Stage 1: forward(img_id, class_id) -> (img, content_code, class_code); noise in training mode."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.content_embedding = RefRegularizedEmbedding(cfg.n_imgs, cfg.content_dim, cfg.content_std)
        self.class_embedding = nn.Embedding(cfg.n_classes, cfg.class_dim)
        self.modulation = RefModulation(cfg.class_dim, cfg.n_adain_layers, cfg.adain_dim)
        self.generator = RefGenerator(cfg)

    def forward(self, img_id: Tensor, class_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        content_code = self.content_embedding(img_id)
        class_code = self.class_embedding(class_id)
        return self.generator(content_code, self.modulation(class_code)), content_code, class_code


class RefAmortized(nn.Module):
    """Stage 2: forward(img) reconstructs; convert(content_img, class_img) transfers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.content_encoder = RefEncoder(cfg, cfg.content_dim)
        self.class_encoder = RefEncoder(cfg, cfg.class_dim)
        self.modulation = RefModulation(cfg.class_dim, cfg.n_adain_layers, cfg.adain_dim)
        self.generator = RefGenerator(cfg)

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.convert(img, img)

    def convert(self, content_img: Tensor, class_img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        content_code = self.content_encoder(content_img)
        class_code = self.class_encoder(class_img)
        return self.generator(content_code, self.modulation(class_code)), content_code, class_code


class RefVGGDistance(nn.Module):
    """The reference's perceptual loss: pixel L1 plus the L1 between VGG16 features of both images at
    five layers, the two images sent through VGG in two passes, both under autograd, NCHW; VGG's
    weights are left trainable (the reference never freezes them), so backward computes their
    gradients for both passes. The same value as lordkit.losses.PerceptualLoss."""

    def __init__(self, vgg: VGG16Features):
        super().__init__()
        self.vgg = vgg.requires_grad_(True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = (pred - target).abs().mean()
        if pred.shape[1] == 1:
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        f1 = self.vgg((pred - self.mean) / self.std)
        f2 = self.vgg((target - self.mean) / self.std)
        for a, b in zip(f1, f2):
            loss = loss + (a - b).abs().mean()
        return loss


class _Transfer(nn.Module):
    def __init__(self, model: RefAmortized):
        super().__init__()
        self.model = model

    def forward(self, content_img: Tensor, class_img: Tensor) -> Tensor:
        return self.model.convert(content_img, class_img)[0]


class _CodeGenerator(nn.Module):
    def __init__(self, model: RefAmortized):
        super().__init__()
        self.modulation, self.generator = model.modulation, model.generator

    def forward(self, content_code: Tensor, class_code: Tensor) -> Tensor:
        return self.generator(content_code, self.modulation(class_code))


def _load_from(ref: nn.Module, own: nn.Module) -> nn.Module:
    """Copy a lordkit model's weights into its reference counterpart (reference key -> lordkit key)."""
    state = own.state_dict()
    ref.load_state_dict({k: state[map_reference_key(k)].detach().clone() for k in ref.state_dict()})
    return ref


def reference_amortized(model: AmortizedModel, cfg: ModelConfig) -> RefAmortized:
    return _load_from(RefAmortized(cfg), model).train(model.training)


def reference_latent(model: LatentModel, cfg: ModelConfig) -> RefLatent:
    return _load_from(RefLatent(cfg), model).train(model.training)


def reference_networks(model: AmortizedModel, cfg: ModelConfig) -> dict[str, nn.Module]:
    """The exported networks by name (lordkit.export_format.NETWORKS) in the reference's formulation."""
    ref = reference_amortized(model, cfg).eval()
    return {"content_encoder": ref.content_encoder, "class_encoder": ref.class_encoder,
            "generator": _CodeGenerator(ref), "transfer": _Transfer(ref)}
