"""Every exportable LORD module: shapes, no NaN, TorchScript == eager, ONNX (onnxruntime) == eager."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lordkit.config import ConfigError, LordConfig, ModelConfig, preset
from lordkit.errors import LordkitError
from lordkit.bench.reference import reference_amortized
from lordkit.models import (FORMS, AmortizedModel, Encoder, Generator, LatentModel, Modulation, adain_batch_norm,
                            adain_explicit, adain_group_norm, export_form, form_for, form_of, interpolate2x,
                            set_form, upsample2x, upsample_conv3x3, upsampled_kernel, amortized_from_latent,
                            code_generator, transfer_net)
from lordkit.reference import map_reference_key

ort = pytest.importorskip("onnxruntime")


def tiny_cfg(img_size: int = 32, channels: int = 3) -> ModelConfig:
    n_adain_layers = max(3, img_size.bit_length() - 4)  # generator starts at <= 8 px
    return ModelConfig(img_size=img_size, channels=channels, n_imgs=7, n_classes=3, content_dim=8, class_dim=12,
                       n_adain_layers=n_adain_layers, adain_dim=16, gen_last_dim=8,
                       enc_conv_dims=(8, 8, 16, 16, 16), enc_fc_dim=16)


SIZES = [(32, 3), (32, 1), (64, 3), (64, 1), (128, 3)]


def export_onnx(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str]) -> bytes:
    f = io.BytesIO()
    axes = {n: {0: "batch"} for n in input_names + output_names}
    with warnings.catch_warnings(), export_form(module):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=17, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes)
    return f.getvalue()


def check_exports(module: torch.nn.Module, args: tuple, other_args: tuple, input_names: list[str],
                  output_names: list[str]) -> None:
    """Script == eager on `args`; ONNX exported at `args` matches eager on `other_args` (another batch size)."""
    module = module.eval()
    with torch.inference_mode():
        ref = module(*args)
        scripted = torch.jit.script(module)(*args)
    ref_t = ref if isinstance(ref, tuple) else (ref,)
    scr_t = scripted if isinstance(scripted, tuple) else (scripted,)
    for r, s in zip(ref_t, scr_t):
        assert torch.isfinite(r).all()
        torch.testing.assert_close(s, r, rtol=0, atol=1e-6)

    sess = ort.InferenceSession(export_onnx(module, args, input_names, output_names),
                                providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref2 = module(*other_args)
    ref2_t = ref2 if isinstance(ref2, tuple) else (ref2,)
    outs = sess.run(None, {n: a.numpy() for n, a in zip(input_names, other_args)})
    for r, o in zip(ref2_t, outs):
        assert o.shape == tuple(r.shape)
        np.testing.assert_allclose(o, r.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("img_size,channels", SIZES)
def test_generator_and_encoder_export(img_size: int, channels: int) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(img_size, channels)
    model = AmortizedModel(cfg).eval()
    img2, img3 = torch.rand(2, channels, img_size, img_size), torch.rand(3, channels, img_size, img_size)

    check_exports(model.content_encoder, (img2,), (img3,), ["img"], ["content_code"])
    # The class encoder is the same module type as the content encoder: script it, skip its ONNX.
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.script(model.class_encoder)(img2), model.class_encoder(img2))
    content2, content3 = torch.randn(2, cfg.content_dim), torch.randn(3, cfg.content_dim)
    class2, class3 = torch.randn(2, cfg.class_dim), torch.randn(3, cfg.class_dim)
    check_exports(code_generator(model), (content2, class2), (content3, class3),
                  ["content_code", "class_code"], ["img"])
    check_exports(transfer_net(model), (img2, img2.flip(0)), (img3, img3.flip(0)),
                  ["content_img", "class_img"], ["img"])

    with torch.inference_mode():
        out, content_code, class_code = model(img3)
    assert out.shape == (3, channels, img_size, img_size)
    assert content_code.shape == (3, cfg.content_dim) and class_code.shape == (3, cfg.class_dim)
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("img_size,channels", [(32, 3), (64, 1)])
def test_latent_model(img_size: int, channels: int) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(img_size, channels)
    model = LatentModel(cfg)
    ids, cls = torch.tensor([0, 6, 3]), torch.tensor([2, 0, 1])
    img, content, class_code = model(ids, cls, 1.0)
    assert img.shape == (3, channels, img_size, img_size)
    assert content.shape == (3, cfg.content_dim) and class_code.shape == (3, cfg.class_dim)
    assert torch.isfinite(img).all()
    # Embeddings start uniform(-0.05, 0.05).
    for w in (model.content_embedding.embedding.weight, model.class_embedding.weight):
        assert w.abs().max() <= 0.05
    # Training mode adds noise of the given std; eval mode and std 0 return the clean code.
    clean = model.content_embedding.embedding(ids)
    assert (content - clean).abs().max() > 0.1
    assert torch.equal(model.content_embedding(ids, 0.0), clean)
    model.eval()
    assert torch.equal(model(ids, cls, 1.0)[1], clean)

    scripted = torch.jit.script(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(ids, cls, 0.0)[0], model(ids, cls)[0], rtol=0, atol=1e-6)

    # Gradients reach every parameter.
    model.train()
    img, content, _ = model(ids, cls, 0.5)
    (img.mean() + content.pow(2).mean()).backward()
    assert all(p.grad is not None for p in model.parameters())

    # Stage 2 starts from stage 1's generator and modulation.
    amortized = amortized_from_latent(model, cfg)
    torch.testing.assert_close(amortized.generator.fc_layers[0].weight, model.generator.fc_layers[0].weight)


def test_amortized_convert_scripted() -> None:
    torch.manual_seed(0)
    model = AmortizedModel(tiny_cfg()).eval()
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted.convert(a, b)[0], model.convert(a, b)[0], rtol=0, atol=1e-6)
        # Transfer mixes the content code of a with the class code of b.
        mixed = model.generator(model.content_encoder(a), model.modulation(model.class_encoder(b)))
        torch.testing.assert_close(transfer_net(model)(a, b), mixed)


def test_adain_matches_independent_instance_norm() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 7) * 4 + 2
    weight, bias = torch.randn(3, 5), torch.randn(3, 5)
    out = adain_batch_norm(x, weight, bias)
    expected = torch.empty_like(x)
    for b in range(3):
        for c in range(5):
            m = x[b, c].double()
            norm = (m - m.mean()) / torch.sqrt(m.var(unbiased=False) + 1e-5)
            expected[b, c] = (norm * weight[b, c] + bias[b, c]).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # And the reference's own arithmetic: batch_norm over (1, B*C, H, W) in training mode.
    ref = F.batch_norm(x.reshape(1, 15, 6, 7), None, None, weight.reshape(-1), bias.reshape(-1),
                       training=True, eps=1e-5).reshape(x.shape)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # The CPU form on a channels-last x gives the same result, and so does the elementwise form.
    torch.testing.assert_close(adain_group_norm(x.to(memory_format=torch.channels_last), weight, bias), out)
    torch.testing.assert_close(adain_explicit(x, weight, bias), out, rtol=0, atol=1e-5)
    # Gradients too (training runs the fused forms), and in bf16 the statistics stay float32.
    # NCHW (F.batch_norm), channels-last (F.group_norm + addcmul, the CPU form) and the explicit form.
    xs = [x.clone().requires_grad_(True), x.clone().to(memory_format=torch.channels_last).requires_grad_(True),
          x.clone().requires_grad_(True)]
    ws = [weight.clone().requires_grad_(True) for _ in range(3)]
    bs = [bias.clone().requires_grad_(True) for _ in range(3)]
    for f, xi, wi, bi in zip((adain_batch_norm, adain_group_norm, adain_explicit), xs, ws, bs):
        (f(xi, wi, bi) ** 2).sum().backward()
    for i in (0, 1):
        torch.testing.assert_close(xs[i].grad, xs[2].grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ws[i].grad, ws[2].grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(bs[i].grad, bs[2].grad, rtol=1e-4, atol=1e-4)
    assert xs[1].grad.is_contiguous(memory_format=torch.channels_last)
    for f in (adain_batch_norm, adain_group_norm, adain_explicit):
        half = f(x.bfloat16(), weight, bias)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), out, rtol=0.02, atol=0.05)


def test_upsample_is_nearest_neighbour() -> None:
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(upsample2x(x), F.interpolate(x, scale_factor=2.0, mode="nearest"), rtol=0, atol=0)
    torch.testing.assert_close(interpolate2x(x), upsample2x(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 5, 4, 4), (3, 4, 5, 7), (1, 3, 1, 1)])
def test_upsample_conv3x3_is_the_3x3_convolution_of_the_upsampled_map(shape) -> None:
    torch.manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(*shape, dtype=torch.float64)
    weight, bias = torch.randn(6, c, 3, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    want = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = upsample_conv3x3(x.contiguous(memory_format=layout), weight, bias)
        assert got.shape == want.shape
        assert got.is_contiguous(memory_format=layout) or h * w == 1  # the input's layout
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(upsample_conv3x3(x, weight, None), want - bias[:, None, None], rtol=1e-12, atol=1e-12)
    assert upsampled_kernel(weight).shape == (c, 6, 4, 4)
    # Gradients of input, weight and bias equal those of the two-step form.
    g = torch.randn(want.shape, dtype=torch.float64)
    grads = []
    for f in (lambda a, k, b: F.conv2d(F.interpolate(a, scale_factor=2.0, mode="nearest"), k, b, padding=1),
              upsample_conv3x3):
        xs, ks, bs = (t.clone().requires_grad_(True) for t in (x, weight, bias))
        (f(xs, ks, bs) * g).sum().backward()
        grads.append((xs.grad, ks.grad, bs.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(upsample_conv3x3, (x[:1, :2, :3, :2].clone().requires_grad_(True),
                                                       weight[:2, :2].clone().requires_grad_(True),
                                                       bias[:2].clone().requires_grad_(True)))


def test_channels_last_generator_keeps_its_layout_and_its_output() -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(32, 3)
    gen = Generator(cfg).eval()
    code, params = torch.randn(2, cfg.content_dim), torch.randn(2, cfg.n_adain_layers, cfg.adain_dim, 2)
    x = torch.randn(2, cfg.adain_dim, 8, 8).contiguous(memory_format=torch.channels_last)
    assert interpolate2x(x).is_contiguous(memory_format=torch.channels_last)
    for f in (adain_group_norm, adain_explicit):
        assert f(x, params[:, 0, :, 1], params[:, 0, :, 0]).is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = gen(code, params)
        got = gen.to(memory_format=torch.channels_last)(code, params)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_modulation_layout() -> None:
    mod = Modulation(class_dim=6, n_adain_layers=3, adain_dim=4)
    code = torch.randn(2, 6)
    params = mod(code)
    assert params.shape == (2, 3, 4, 2)
    # Layer i's Linear output interleaves (bias, scale) per channel.
    torch.testing.assert_close(params[:, 1].reshape(2, 8), mod.adain_per_layer[1](code))


def test_channels_last_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = AmortizedModel(tiny_cfg()).eval()
    img = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        ref = model(img)[0]
        cl_model = AmortizedModel(tiny_cfg()).eval()
        cl_model.load_state_dict(model.state_dict())
        cl_model = cl_model.to(memory_format=torch.channels_last)
        out = cl_model(img.to(memory_format=torch.channels_last))[0]
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(img)[0]
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1


def in_form(model: torch.nn.Module, form: str) -> torch.nn.Module:
    """`model` in `form` on the CPU. The CUDA channels-last form gets channels-last weights, as CUDA
    training gives it (place() in lordkit.training.session); the conversion re-chooses "cpu" on the
    CPU, so the form is forced after it."""
    if form == "cuda_channels_last":
        model = model.to(memory_format=torch.channels_last)
    return set_form(model, form)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_computes_the_reference_function(form: str) -> None:
    """Each form, run on the CPU (the CUDA ones forced there, in their layout), equals the reference
    formulation (lordkit.bench.reference) in outputs and in every parameter's gradient, and scripts."""
    torch.manual_seed(0)
    cfg = tiny_cfg(32, 3)
    model = AmortizedModel(cfg)
    ref = reference_amortized(model, cfg).train()
    model = in_form(model, form).train()
    assert form_of(model) == form
    # The layout each AdaIN sees is the form's own (channels-last where the form keeps it).
    layout = torch.channels_last if form in ("cpu", "cuda_channels_last") else torch.contiguous_format
    seen: list[bool] = []
    hooks = [block.norm.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=layout) and not args[0].is_contiguous()
                                    if layout == torch.channels_last else args[0].is_contiguous()))
        for block in model.generator.adain_conv_layers]
    a, b, target = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    a_in, b_in = (t.contiguous(memory_format=layout) for t in (a, b))
    got = model.convert(a_in, b_in)
    want = ref.convert(a, b)
    for h in hooks:
        h.remove()
    assert seen == [True] * cfg.n_adain_layers
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    # Gradients of every parameter under one loss on all three outputs.
    for (img, content, class_code), net in ((got, model), (want, ref)):
        ((img - target).abs().mean() + content.pow(2).mean() + class_code.pow(2).mean()).backward()
    ref_grads = {map_reference_key(k): p.grad for k, p in ref.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # Scripted and frozen, the form is folded in and computes the same.
    net = transfer_net(model).eval()
    with torch.inference_mode():
        frozen = torch.jit.freeze(torch.jit.script(net))
        torch.testing.assert_close(frozen(a_in, b_in), net(a_in, b_in), rtol=0, atol=1e-6)
    assert form_of(model) == form


def test_form_is_chosen_when_built_or_moved() -> None:
    assert form_for("cpu") == form_for("cpu", channels_last=True) == "cpu"
    assert form_for("cuda") == form_for(torch.device("mps"), channels_last=True) == "nchw"
    assert form_for(torch.device("cuda", 1), channels_last=True) == "cuda_channels_last"
    model = AmortizedModel(tiny_cfg())
    keys = list(model.state_dict())
    assert form_of(model) == "cpu"
    assert set_form(model, "nchw") is model and form_of(model) == "nchw"
    assert list(model.state_dict()) == keys  # the form modules hold no weights
    with export_form(transfer_net(model)):
        assert form_of(model) == "onnx"
    assert form_of(model) == "nchw"  # restored
    model.to(memory_format=torch.channels_last)  # a move or conversion chooses again, from the weights
    assert form_of(model) == "cpu"
    model.to("meta")
    assert form_of(model) == "nchw" and form_of(code_generator(model)) == "nchw"
    model.to_empty(device="cpu")
    assert form_of(model) == "cpu"
    with pytest.raises(ValueError, match="unknown form"):
        set_form(model, "gpu")


def test_encoder_sizes_from_config() -> None:
    for img_size in (32, 64, 128, 256):
        cfg = ModelConfig(img_size=img_size, n_adain_layers=img_size.bit_length() - 3,
                          enc_conv_dims=(4, 4, 4, 4, 4), enc_fc_dim=8)
        enc = Encoder(cfg, 5)
        assert enc.fc_layers[0].in_features == 4 * (img_size // 16) ** 2
    assert ModelConfig().enc_flat_dim == 4096  # the reference's constant at 64 px
    assert Generator(ModelConfig(img_size=256, n_adain_layers=6, adain_dim=16, gen_last_dim=4)).init_size == 4


def test_model_config_validation() -> None:
    for bad in (dict(img_size=48), dict(img_size=16), dict(img_size=512), dict(channels=2), dict(adain_dim=12),
                dict(img_size=32, n_adain_layers=6), dict(img_size=256, n_adain_layers=4)):
        with pytest.raises(ValueError) as e:
            ModelConfig(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(LordkitError, match="power of two"):
        ModelConfig(img_size=100)
    with pytest.raises(ValueError, match="n_imgs"):
        LatentModel(ModelConfig(img_size=32))


def test_config_json_round_trip(tmp_path) -> None:
    cfg = preset("synthetic").apply_overrides(["model.n_imgs=10", "model.n_classes=2"])
    path = tmp_path / "config.json"
    cfg.save(path)
    loaded = LordConfig.load(path)
    assert loaded == cfg
    assert isinstance(loaded.latent.betas, tuple) and isinstance(loaded.model.enc_conv_dims, tuple)
    assert json.loads(path.read_text())["latent"]["betas"] == [0.5, 0.999]
    assert LordConfig.from_json({}) == LordConfig()  # missing keys take the defaults


def test_config_unknown_keys_and_types() -> None:
    with pytest.raises(ValueError, match="latent.bogus"):
        LordConfig.from_json({"latent": {"bogus": 1}})
    with pytest.raises(ValueError, match="'extra'"):
        LordConfig.from_json({"extra": {}})
    with pytest.raises(ValueError, match="model.content_dim"):
        LordConfig.from_json({"model": {"content_dim": "big"}})
    assert LordConfig.from_json({"latent": {"lr_min": 0}}).latent.lr_min == 0.0


def test_config_overrides() -> None:
    base = LordConfig()
    cfg = base.apply_overrides(["latent.batch_size=64", "model.content_dim=32", "latent.betas=0.9,0.99",
                                "amortized.loss=l1", "latent.noise_warmup_epochs=2.5",
                                "model.enc_conv_dims=8,8,8,8,8"])
    assert cfg.latent.batch_size == 64 and cfg.model.content_dim == 32
    assert cfg.latent.betas == (0.9, 0.99) and cfg.amortized.loss == "l1"
    assert cfg.latent.noise_warmup_epochs == 2.5 and cfg.model.enc_conv_dims == (8,) * 5
    assert base.latent.batch_size == 128  # the original is untouched
    for bad, what in [("latent.batch_size=abc", "batch_size"), ("nope.x=1", "'nope'"),
                      ("latent.nope=1", "latent.nope"), ("latent.batch_size", "section.field=value"),
                      ("latent.loss=mse", "loss"), ("model.img_size=48", "power of two")]:
        with pytest.raises(ValueError, match=what) as e:
            base.apply_overrides([bad])
        assert "\n" not in str(e.value)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, LordkitError)


def test_presets() -> None:
    assert preset("celeba") == LordConfig()
    syn = preset("synthetic")
    assert syn == preset("small")  # an alias
    assert syn.model.img_size == 32 and syn.model.n_adain_layers == 3 and syn.latent.pca_init > 0
    assert syn.model.content_dim < LordConfig().model.content_dim
