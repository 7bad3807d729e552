"""LORD networks, written to script and export: explicit tensor arguments, tuples out, sizes from config.

Architecture and parameter layout follow the public PyTorch re-implementation of LORD, with two
deliberate differences:
- AdaIN parameters are an argument of the generator's forward, never assigned onto modules, so the
  generator is stateless between calls (thread-safe, scriptable, exportable);
- the encoder's flatten size and the generator's start size come from the config (the reference
  hard-codes Linear(4096, ...), which only fits 64 px input).
The AdaIN conv blocks are a ModuleList of `AdaINConvBlock`s (keys `adain_conv_layers.{i}.conv.*`);
the reference's flat Sequential keys (`adain_conv_layers.{4i+1}.*`) are mapped by lordkit.reference.

How the same function is computed depends on where it runs (docs/bench.md): on the CPU the networks
run channels-last, each upsampling + 3x3 conv as one transposed convolution and AdaIN as group_norm;
elsewhere upsampling by broadcast and AdaIN as the reference's batch_norm; under `onnx_form` (the
ONNX export) NCHW with F.interpolate and AdaIN in elementwise operators.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lordkit.config import ModelConfig

ADAIN_EPS = 1e-5
EMBEDDING_INIT = 0.05  # embeddings start uniform(-0.05, 0.05), as in the reference


def adain(x: Tensor, weight: Tensor, bias: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """Adaptive instance norm: normalise each (sample, channel) map over H, W, then scale and shift.

    x (B, C, H, W); weight, bias (B, C). Mean and biased variance over H, W with eps inside the
    square root, in one fused kernel forward and one backward instead of an elementwise pass per term:
    - a channels-last x on the CPU (the generator's CPU layout): F.group_norm with one group per
      channel, whose CPU kernel is native in channels-last, then one addcmul for scale and shift;
    - an NCHW x: as the reference computes it, F.batch_norm in training mode on x viewed as
      (1, B*C, H, W) (a view, no copy);
    - a channels-last x on CUDA (CUDA training): the elementwise form, which keeps its layout.
    Computed in float32 (safe under bf16/fp16 autocast), returned in x's dtype. The ONNX export uses
    `adain_explicit`, the same arithmetic in exportable operators.
    """
    xf = x if x.dtype == torch.float32 else x.float()
    if not x.is_contiguous():
        if x.is_cuda:
            return adain_explicit(x, weight, bias, eps)
        n = F.group_norm(xf, xf.shape[1], None, None, eps)
        return torch.addcmul(bias.float()[:, :, None, None], n, weight.float()[:, :, None, None]).to(x.dtype)
    b, c, h, w = x.shape
    out = F.batch_norm(xf.reshape(1, b * c, h, w), None, None, weight.float().reshape(-1),
                       bias.float().reshape(-1), training=True, momentum=0.0, eps=eps)
    return out.reshape(b, c, h, w).to(x.dtype)


def adain_explicit(x: Tensor, weight: Tensor, bias: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """`adain` written in elementwise operators and reductions, for the ONNX export (whose exporter
    cannot export batch_norm over a batch-dependent channel count)."""
    xf = x.float()
    mean = xf.mean(dim=(2, 3), keepdim=True)
    centred = xf - mean
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)
    out = centred * torch.rsqrt(var + eps)
    out = out * weight.float()[:, :, None, None] + bias.float()[:, :, None, None]
    return out.to(x.dtype)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling as a broadcast and one copy. F.interpolate's CPU kernel
    reorders an NCHW tensor to channels-last and back (three copies, ~4x the time); a channels-last
    tensor keeps its layout through F.interpolate, whose kernel is native there."""
    if not x.is_contiguous():
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


def upsampled_kernel(weight: Tensor) -> Tensor:
    """The 3x3 convolution (padding 1) of a nearest-2x-upsampled map, as the kernel of one transposed
    convolution of the map itself (stride 2, 4x4 kernel, padding 1): (O, I, 3, 3) -> (I, O, 4, 4).

    Along one axis, output pixel 2i sees source pixels i-1 (kernel tap 0) and i (taps 1 and 2, which
    fall on the same source pixel after upsampling: their weights add); output pixel 2i+1 sees i (taps
    0 and 1) and i+1 (tap 2). The transposed convolution's four taps per axis are therefore
    [w2, w1 + w2, w0 + w1, w0], for rows and columns alike. The same function, in 16 multiply-adds per
    source pixel and channel pair instead of 36, without building the upsampled map."""
    w = weight
    r = torch.stack([w[:, :, 2], w[:, :, 1] + w[:, :, 2], w[:, :, 0] + w[:, :, 1], w[:, :, 0]], 2)  # rows: (O, I, 4, 3)
    k = torch.stack([r[..., 2], r[..., 1] + r[..., 2], r[..., 0] + r[..., 1], r[..., 0]], 3)  # columns: (O, I, 4, 4)
    return k.transpose(0, 1)


def upsample_conv3x3(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """conv3x3(upsample_nearest_2x(x)), padding 1, as one transposed convolution (`upsampled_kernel`).
    On a 2-core CPU (256 channels, 16-32 px source, batch 8-16, channels-last) 1.85-2.0x the forward
    and 1.75-1.85x forward + backward of the upsampling and 3x3 convolution it replaces; equal to 1e-14
    in float64."""
    return F.conv_transpose2d(x, upsampled_kernel(weight).to(x.dtype), None if bias is None else bias.to(x.dtype),
                              stride=2, padding=1)


def cpu_layout(x: Tensor) -> Tensor:
    """x in the layout the networks run in on the CPU: channels-last, where oneDNN's convolutions,
    F.interpolate and F.group_norm are native and no kernel reorders the tensor back and forth
    (1.15-1.2x the NCHW form's transfer images/s on a 2-core CPU). Other devices keep x as it is."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def onnx_form(module: nn.Module) -> Iterator[None]:
    """Within the block, the networks use the exportable operators (NCHW throughout, F.interpolate,
    adain_explicit); the eager and TorchScript forms use the fused ones in the CPU layout."""
    blocks = [m for m in module.modules() if isinstance(m, (AdaINConvBlock, Generator, Encoder))]
    for block in blocks:
        block.onnx_form = True
    try:
        yield
    finally:
        for block in blocks:
            block.onnx_form = False


class RegularizedEmbedding(nn.Module):
    """Per-image content codes. In training mode, Gaussian noise of std `noise_std` is added.

    The std is an argument so the trainer can ramp it up (noise warm-up); the reference adds noise
    of std `content_std` whenever the module is in training mode. The trainer should compute the
    content decay on the returned (noisy) code, as the reference does. In eval mode, or with
    noise_std 0, the clean code is returned and no random numbers are drawn.
    """

    def __init__(self, n_embeddings: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embeddings, dim)
        nn.init.uniform_(self.embedding.weight, -EMBEDDING_INIT, EMBEDDING_INIT)

    def forward(self, ids: Tensor, noise_std: float = 0.0) -> Tensor:
        code = self.embedding(ids)  # (B, content_dim)
        if self.training and noise_std > 0.0:
            code = code + torch.randn_like(code) * noise_std
        return code


def class_embedding(n_classes: int, dim: int) -> nn.Embedding:
    """Class-code table: a plain embedding initialised uniform(-0.05, 0.05)."""
    emb = nn.Embedding(n_classes, dim)
    nn.init.uniform_(emb.weight, -EMBEDDING_INIT, EMBEDDING_INIT)
    return emb


class Modulation(nn.Module):
    """Class code -> AdaIN parameters (B, n_adain_layers, adain_dim, 2); [..., 0] bias, [..., 1] scale.

    One Linear(class_dim, 2 * adain_dim) per layer; its outputs interleave (bias, scale) per channel,
    as in the reference, so reference weights load unchanged.
    """

    def __init__(self, class_dim: int, n_adain_layers: int, adain_dim: int):
        super().__init__()
        self.n_adain_layers = n_adain_layers
        self.adain_dim = adain_dim
        self.adain_per_layer = nn.ModuleList(
            [nn.Linear(class_dim, 2 * adain_dim) for _ in range(n_adain_layers)]
        )

    def forward(self, class_code: Tensor) -> Tensor:
        params = torch.cat([layer(class_code) for layer in self.adain_per_layer], dim=-1)
        return params.reshape(-1, self.n_adain_layers, self.adain_dim, 2)


class AdaINConvBlock(nn.Module):
    """2x nearest upsample -> 3x3 conv -> LeakyReLU -> AdaIN(weight, bias). On the CPU the first two
    run as one transposed convolution (`upsample_conv3x3`), the same function."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.onnx_form = False  # set by `onnx_form` while exporting; a constant once TorchScript freezes it

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if self.onnx_form:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return adain_explicit(F.leaky_relu(self.conv(x), 0.01), weight, bias)
        if x.device.type == "cpu":
            x = upsample_conv3x3(x, self.conv.weight, self.conv.bias)
        else:
            x = self.conv(upsample2x(x))
        return adain(F.leaky_relu(x, 0.01), weight, bias)


class Generator(nn.Module):
    """(content_code (B, content_dim), adain_params (B, n_adain_layers, adain_dim, 2)) -> image
    (B, channels, img_size, img_size) in [0, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        s, d = cfg.gen_init_size, cfg.adain_dim
        self.init_size = s
        self.adain_dim = d
        self.fc_layers = nn.Sequential(
            nn.Linear(cfg.content_dim, s * s * (d // 8)),
            nn.LeakyReLU(),
            nn.Linear(s * s * (d // 8), s * s * (d // 4)),
            nn.LeakyReLU(),
            nn.Linear(s * s * (d // 4), s * s * d),
            nn.LeakyReLU(),
        )
        self.adain_conv_layers = nn.ModuleList([AdaINConvBlock(d) for _ in range(cfg.n_adain_layers)])
        self.last_conv_layers = nn.Sequential(
            nn.Conv2d(d, cfg.gen_last_dim, kernel_size=5, padding=2),
            nn.LeakyReLU(),
            nn.Conv2d(cfg.gen_last_dim, cfg.channels, kernel_size=7, padding=3),
            nn.Sigmoid(),
        )
        # A sigmoid reaches 0 and 1 only at infinite logits. Where most pixels are 0 in every image
        # (a black background) their loss keeps pulling the logits down, and Adam, which normalises
        # gradient size, keeps taking full steps however small the gradient gets, until the logits sit
        # near -20 where the sigmoid passes no gradient: nothing is learnt any more (a black image for
        # every code). Stretching [m, 1 - m] of the sigmoid onto [0, 1] puts black and white at finite
        # logits (log(m / (1 - m)), -4.6 for 0.01), where the loss has its minimum and the gradient
        # stays alive. The stretch is not clamped in training (the loss keeps its gradient beyond
        # 0 and 1); in eval (and in every export) the output is clamped to [0, 1].
        self.output_margin = float(cfg.output_margin)
        self.onnx_form = False  # set by `onnx_form` while exporting

    def forward(self, content_code: Tensor, adain_params: Tensor) -> Tensor:
        x = self.fc_layers(content_code)
        x = x.reshape(-1, self.adain_dim, self.init_size, self.init_size)  # (B, D, s, s)
        if not self.onnx_form:
            x = cpu_layout(x)
        for i, block in enumerate(self.adain_conv_layers):
            x = block(x, adain_params[:, i, :, 1], adain_params[:, i, :, 0])
        out = self.last_conv_layers(x).contiguous()  # (B, C, H, W), NCHW whatever the layout inside
        if self.output_margin > 0:
            out = (out - self.output_margin) * (1.0 / (1.0 - 2.0 * self.output_margin))
            if not self.training:
                out = out.clamp(0.0, 1.0)
        return out


class Encoder(nn.Module):
    """Image (B, channels, img_size, img_size), values in [0, 1] -> code (B, code_dim)."""

    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        dims = cfg.enc_conv_dims
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, dims[0], kernel_size=7, stride=1, padding=3), nn.LeakyReLU()]
        for c_in, c_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.LeakyReLU()]
        self.conv_layers = nn.Sequential(*layers)
        self.fc_layers = nn.Sequential(
            nn.Linear(cfg.enc_flat_dim, cfg.enc_fc_dim),
            nn.LeakyReLU(),
            nn.Linear(cfg.enc_fc_dim, cfg.enc_fc_dim),
            nn.LeakyReLU(),
            nn.Linear(cfg.enc_fc_dim, code_dim),
        )
        self.onnx_form = False  # set by `onnx_form` while exporting

    def forward(self, img: Tensor) -> Tensor:
        x = self.conv_layers(img if self.onnx_form else cpu_layout(img))
        x = torch.flatten(x, 1)  # NCHW order whatever the memory format (channels-last safe)
        return self.fc_layers(x)


class LatentModel(nn.Module):
    """Stage 1: content table, class table, modulation and generator.

    forward(img_id (B,), class_id (B,), noise_std) -> (img, content_code, class_code), where
    content_code carries the training noise (compute the content decay on it).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.n_imgs < 1 or cfg.n_classes < 1:
            raise ValueError("LatentModel needs model.n_imgs and model.n_classes >= 1, "
                             f"got {cfg.n_imgs}, {cfg.n_classes}")
        self.content_embedding = RegularizedEmbedding(cfg.n_imgs, cfg.content_dim)
        self.class_embedding = class_embedding(cfg.n_classes, cfg.class_dim)
        self.modulation = Modulation(cfg.class_dim, cfg.n_adain_layers, cfg.adain_dim)
        self.generator = Generator(cfg)

    def forward(self, img_id: Tensor, class_id: Tensor, noise_std: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        content_code = self.content_embedding(img_id, noise_std)
        class_code = self.class_embedding(class_id)
        img = self.generator(content_code, self.modulation(class_code))
        return img, content_code, class_code


class AmortizedModel(nn.Module):
    """Stage 2: content encoder, class encoder, modulation and generator.

    forward(img) -> (img, content_code, class_code): reconstruction of img;
    convert(content_img, class_img) -> same tuple, content of the first in the class of the second.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.content_encoder = Encoder(cfg, cfg.content_dim)
        self.class_encoder = Encoder(cfg, cfg.class_dim)
        self.modulation = Modulation(cfg.class_dim, cfg.n_adain_layers, cfg.adain_dim)
        self.generator = Generator(cfg)

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.convert(img, img)

    @torch.jit.export
    def convert(self, content_img: Tensor, class_img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        content_code = self.content_encoder(content_img)
        class_code = self.class_encoder(class_img)
        img = self.generator(content_code, self.modulation(class_code))
        return img, content_code, class_code


class CodeGenerator(nn.Module):
    """Export wrapper: (content_code, class_code) -> image. Shares (does not copy) its submodules."""

    def __init__(self, modulation: Modulation, generator: Generator):
        super().__init__()
        self.modulation = modulation
        self.generator = generator

    def forward(self, content_code: Tensor, class_code: Tensor) -> Tensor:
        return self.generator(content_code, self.modulation(class_code))


class TransferNet(nn.Module):
    """Export wrapper: (content_img, class_img) -> image with the first's content in the second's class."""

    def __init__(self, content_encoder: Encoder, class_encoder: Encoder, modulation: Modulation, generator: Generator):
        super().__init__()
        self.content_encoder = content_encoder
        self.class_encoder = class_encoder
        self.modulation = modulation
        self.generator = generator

    def forward(self, content_img: Tensor, class_img: Tensor) -> Tensor:
        class_params = self.modulation(self.class_encoder(class_img))
        return self.generator(self.content_encoder(content_img), class_params)


def code_generator(model: LatentModel | AmortizedModel) -> CodeGenerator:
    return CodeGenerator(model.modulation, model.generator)


def transfer_net(model: AmortizedModel) -> TransferNet:
    return TransferNet(model.content_encoder, model.class_encoder, model.modulation, model.generator)


def eager_networks(model: AmortizedModel) -> dict[str, nn.Module]:
    """The exported networks by name (lordkit.export_format.NETWORKS), sharing the model's submodules."""
    return {"content_encoder": model.content_encoder, "class_encoder": model.class_encoder,
            "generator": code_generator(model), "transfer": transfer_net(model)}


def amortized_from_latent(latent: LatentModel, cfg: ModelConfig) -> AmortizedModel:
    """A stage-2 model whose modulation and generator start as copies of stage 1's (as in the reference)."""
    model = AmortizedModel(cfg)
    model.modulation.load_state_dict(latent.modulation.state_dict())
    model.generator.load_state_dict(latent.generator.state_dict())
    return model
