"""LORD networks, written to script and export: explicit tensor arguments, tuples out, sizes from config.

Architecture and parameter layout follow the public PyTorch re-implementation of LORD, with two
deliberate differences:
- AdaIN parameters are an argument of the generator's forward, never assigned onto modules, so the
  generator is stateless between calls (thread-safe, scriptable, exportable);
- the encoder's flatten size and the generator's start size come from the config (the reference
  hard-codes Linear(4096, ...), which only fits 64 px input).
The AdaIN conv blocks are a ModuleList of `AdaINConvBlock`s (keys `adain_conv_layers.{i}.conv.*`);
the reference's flat Sequential keys (`adain_conv_layers.{4i+1}.*`) are mapped by lordkit.reference.

Forms. The same function is computed in one of four forms (docs/bench.md), each a set of small
parameter-free modules that the blocks hold and call with their weights (`layout`, `upconv`, `norm`;
no state_dict keys of their own):
- "cpu": channels-last throughout, each nearest-2x upsampling + 3x3 conv as one transposed
  convolution (`upsample_conv3x3`), AdaIN as group_norm + addcmul (`adain_group_norm`);
- "nchw": NCHW, upsampling by broadcast (`upsample2x`), AdaIN as the reference's batch_norm
  (`adain_batch_norm`): CUDA with NCHW weights;
- "cuda_channels_last": F.interpolate and the elementwise AdaIN (`adain_explicit`), both of which
  keep a channels-last layout: CUDA training, whose weights are channels-last;
- "onnx": NCHW, F.interpolate, `adain_explicit`: what the ONNX export traces (`export_form`).
The form is chosen once, not in forward: when a module is built and again whenever it is moved or
converted (`.to(...)`, `.cuda()`, `.to(memory_format=...)`, all of which go through nn.Module._apply),
from its parameters' device and memory format (`form_for`). So callers need do nothing: the trainer's
`place` (lordkit.training.session) moves a model to CUDA ("nchw") and converts it to channels-last
("cuda_channels_last"). `set_form` forces a form (until the next move), `export_form` sets "onnx" for
a block of code, `form_of` says which form a module is in. TorchScript scripts the form a module
holds, and freezing folds it in.
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
FORMS = ("cpu", "nchw", "cuda_channels_last", "onnx")


# ----------------------------------------------------------------------------------------------
# The operations of each form. All compute the same function; see the module docstring.


def adain_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """Adaptive instance norm: normalise each (sample, channel) map over H, W, then scale and shift.

    x (B, C, H, W) NCHW; weight, bias (B, C). As the reference computes it: F.batch_norm in training
    mode on x viewed as (1, B*C, H, W) (a view, no copy), mean and biased variance over H, W with eps
    inside the square root, in one fused kernel forward and one backward. Computed in float32 (safe
    under bf16/fp16 autocast), returned in x's dtype.
    """
    xf = x if x.dtype == torch.float32 else x.float()
    b, c, h, w = x.shape
    out = F.batch_norm(xf.reshape(1, b * c, h, w), None, None, weight.float().reshape(-1),
                       bias.float().reshape(-1), training=True, momentum=0.0, eps=eps)
    return out.reshape(b, c, h, w).to(x.dtype)


def adain_group_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """`adain_batch_norm` for a channels-last x on the CPU: F.group_norm with one group per channel,
    whose CPU kernel is native in channels-last, then one addcmul for scale and shift. Float32 inside."""
    xf = x if x.dtype == torch.float32 else x.float()
    n = F.group_norm(xf, xf.shape[1], None, None, eps)
    return torch.addcmul(bias.float()[:, :, None, None], n, weight.float()[:, :, None, None]).to(x.dtype)


def adain_explicit(x: Tensor, weight: Tensor, bias: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """`adain_batch_norm` written in elementwise operators and reductions, which keep x's layout: the
    ONNX export's form (its exporter cannot export batch_norm over a batch-dependent channel count) and
    CUDA channels-last training's. Float32 inside."""
    xf = x.float()
    mean = xf.mean(dim=(2, 3), keepdim=True)
    centred = xf - mean
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)
    out = centred * torch.rsqrt(var + eps)
    out = out * weight.float()[:, :, None, None] + bias.float()[:, :, None, None]
    return out.to(x.dtype)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling of an NCHW x as a broadcast and one copy. F.interpolate's CPU
    kernel reorders an NCHW tensor to channels-last and back (three copies, ~4x the time); on a
    channels-last tensor F.interpolate is native and keeps the layout (`interpolate2x`)."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


def interpolate2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling by F.interpolate: exportable (ONNX Resize), keeps x's layout."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


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


# ----------------------------------------------------------------------------------------------
# The form modules: parameter-free, held by the blocks, called with the blocks' weights.


class ChannelsLast(nn.Module):
    """The "cpu" form's layout: channels-last, where oneDNN's convolutions, F.interpolate and
    F.group_norm are native and no kernel reorders the tensor back and forth (1.15-1.2x the NCHW
    form's transfer images/s on a 2-core CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


class TransposedUpConv(nn.Module):
    """Nearest-2x upsampling then the 3x3 conv, as one transposed convolution (`upsample_conv3x3`)."""

    def forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return upsample_conv3x3(x, weight, bias)


class BroadcastUpConv(nn.Module):
    """Nearest-2x upsampling by broadcast (`upsample2x`, NCHW) then the 3x3 conv."""

    def forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return F.conv2d(upsample2x(x), weight, bias, stride=1, padding=1)


class InterpolateUpConv(nn.Module):
    """Nearest-2x upsampling by F.interpolate (`interpolate2x`) then the 3x3 conv."""

    def forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return F.conv2d(interpolate2x(x), weight, bias, stride=1, padding=1)


class GroupNormAdaIN(nn.Module):
    """AdaIN as `adain_group_norm` (the "cpu" form)."""

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return adain_group_norm(x, weight, bias)


class BatchNormAdaIN(nn.Module):
    """AdaIN as `adain_batch_norm` (the "nchw" form)."""

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return adain_batch_norm(x, weight, bias)


class ExplicitAdaIN(nn.Module):
    """AdaIN as `adain_explicit` (the "cuda_channels_last" and "onnx" forms)."""

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return adain_explicit(x, weight, bias)


# form -> (layout, upconv, norm): the classes of the modules a form's blocks hold
FORM_PARTS: dict[str, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    "cpu": (ChannelsLast, TransposedUpConv, GroupNormAdaIN),
    "nchw": (nn.Identity, BroadcastUpConv, BatchNormAdaIN),
    "cuda_channels_last": (nn.Identity, InterpolateUpConv, ExplicitAdaIN),
    "onnx": (nn.Identity, InterpolateUpConv, ExplicitAdaIN),
}


def form_for(device: torch.device | str, channels_last: bool = False) -> str:
    """The form a module runs in on `device` with (or without) channels-last weights: "cpu" on the
    CPU whatever the layout, "cuda_channels_last" on CUDA with channels-last weights, else "nchw"."""
    device_type = torch.device(device).type
    if device_type == "cpu":
        return "cpu"
    return "cuda_channels_last" if channels_last and device_type == "cuda" else "nchw"


def _chosen_form(module: nn.Module) -> str:
    """form_for of a module's parameters: their device, and whether its 4-D weights are channels-last."""
    params = list(module.parameters())
    if not params:
        return "cpu"
    channels_last = any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                        for p in params)
    return form_for(params[0].device, channels_last)


class FormedModule(nn.Module):
    """A module whose form modules are chosen when it is built (`choose_form` at the end of __init__)
    and again when it is moved or converted (`_apply`, which .to(), .cuda(), .half() ... go through).
    `form` names the form it is in. Parameters replaced without _apply (load_state_dict(assign=True)
    from another device) keep the form: call `set_form` or move the module."""

    def use_form(self, form: str) -> None:
        """Install `form`'s modules in this module (not its children)."""
        raise NotImplementedError

    def choose_form(self) -> None:
        self.use_form(_chosen_form(self))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        super()._apply(fn, recurse)  # children first: each chooses its own form
        self.choose_form()
        return self


def set_form(module: nn.Module, form: str) -> nn.Module:
    """Put every formed module in `module` (itself included) in `form`; returns `module`."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; the forms are {', '.join(FORMS)}")
    for m in module.modules():
        if isinstance(m, FormedModule):
            m.use_form(form)
    return module


def form_of(module: nn.Module) -> str:
    """The form `module`'s formed modules are in; ValueError where they differ or there are none."""
    forms = {m.form for m in module.modules() if isinstance(m, FormedModule)}
    if len(forms) != 1:
        raise ValueError(f"{type(module).__name__} has no single form: {sorted(forms) or 'no formed modules'}")
    return forms.pop()


@contextlib.contextmanager
def export_form(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `module` is in the "onnx" form (NCHW, F.interpolate, adain_explicit, the
    exportable operators); each formed module gets its previous form back afterwards."""
    saved = [(m, m.form) for m in module.modules() if isinstance(m, FormedModule)]
    set_form(module, "onnx")
    try:
        yield module
    finally:
        for m, form in saved:
            m.use_form(form)


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


class AdaINConvBlock(FormedModule):
    """2x nearest upsample -> 3x3 conv -> LeakyReLU -> AdaIN(weight, bias). The upsampling and conv
    (`upconv`) and AdaIN (`norm`) are the form's modules, called with `conv`'s weights."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.choose_form()

    def use_form(self, form: str) -> None:
        _, upconv, norm = FORM_PARTS[form]
        self.upconv, self.norm, self.form = upconv(), norm(), form

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        x = self.upconv(x, self.conv.weight, self.conv.bias)
        return self.norm(F.leaky_relu(x, 0.01), weight, bias)


class Generator(FormedModule):
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
        self.choose_form()

    def use_form(self, form: str) -> None:
        self.layout, self.form = FORM_PARTS[form][0](), form

    def forward(self, content_code: Tensor, adain_params: Tensor) -> Tensor:
        x = self.fc_layers(content_code)
        x = x.reshape(-1, self.adain_dim, self.init_size, self.init_size)  # (B, D, s, s)
        x = self.layout(x)
        for i, block in enumerate(self.adain_conv_layers):
            x = block(x, adain_params[:, i, :, 1], adain_params[:, i, :, 0])
        out = self.last_conv_layers(x).contiguous()  # (B, C, H, W), NCHW whatever the layout inside
        if self.output_margin > 0:
            out = (out - self.output_margin) * (1.0 / (1.0 - 2.0 * self.output_margin))
            if not self.training:
                out = out.clamp(0.0, 1.0)
        return out


class Encoder(FormedModule):
    """Image (B, channels, img_size, img_size), values in [0, 1] -> code (B, code_dim)."""

    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        # model.encoder_input_mean, subtracted from the input (kept in the config, not in the weights)
        mean = torch.tensor(cfg.encoder_input_mean or (0.0,) * cfg.channels, dtype=torch.float32)
        self.register_buffer("input_mean", mean.reshape(1, cfg.channels, 1, 1), persistent=False)
        self.centred = bool(cfg.encoder_input_mean)
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
        self.choose_form()

    def use_form(self, form: str) -> None:
        self.layout, self.form = FORM_PARTS[form][0](), form

    def forward(self, img: Tensor) -> Tensor:
        if self.centred:
            img = img - self.input_mean
        x = self.conv_layers(self.layout(img))
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
