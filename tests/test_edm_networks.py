"""EDM networks: preconditioning formulas, attention, bottleneck features, conditioning, options.

Formulas are checked against independent float64 computations of Karras et al. 2022
(arXiv:2206.00364), Table 1, not against our own earlier output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import diffsampler as ds
from diffsampler.plugins.edm.denoiser import EDMDenoiser
from diffsampler.plugins.edm.layers import UNetBlock
from diffsampler.plugins.edm.precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond

SIGMAS = np.array([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])
SMALL = dict(model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[])


class _Probe(nn.Module):
    """Stands in for the U-Net: F(x_in; c_noise) = 2 x_in + c_noise, recording its inputs."""

    def forward(self, x, noise, labels=None, augment=None, *, return_features=False):  # type: ignore[no-untyped-def]
        self.seen = (x.detach().clone(), noise.detach().clone())
        out = 2 * x + noise.reshape(-1, 1, 1, 1)
        return (out, x) if return_features else out


def _check(net: nn.Module, c_skip, c_out, c_in, c_noise, channels: int = 1) -> None:  # type: ignore[no-untyped-def]
    net.model = _Probe()
    x = torch.linspace(-2, 2, len(SIGMAS) * channels * 4, dtype=torch.float32).reshape(len(SIGMAS), channels, 2, 2)
    sigma = torch.tensor(SIGMAS, dtype=torch.float32)
    out = net(x, sigma).double().numpy()
    seen_x, seen_noise = net.model.seen
    xs = x.double().numpy()
    s = lambda a: np.asarray(a, dtype=np.float64).reshape(-1, 1, 1, 1)  # noqa: E731
    np.testing.assert_allclose(seen_noise.double().numpy(), c_noise, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(seen_x.double().numpy(), s(c_in) * xs, rtol=1e-5, atol=1e-6)
    expected = s(c_skip) * xs + s(c_out) * (2 * s(c_in) * xs + s(c_noise))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_vp_precond_matches_table_1() -> None:
    beta_d, beta_min, M, eps_t = 19.9, 0.1, 1000, 1e-5
    net = VPPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", **SMALL)
    # VP noise level: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), and its inverse
    t = np.linspace(1e-5, 1, 7)
    sigma_t = np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))
    np.testing.assert_allclose(net.sigma(torch.tensor(t)).numpy(), sigma_t, rtol=1e-10)
    np.testing.assert_allclose(net.sigma_inv(torch.tensor(sigma_t)).numpy(), t, rtol=1e-9)
    assert net.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * beta_d * eps_t**2 + beta_min * eps_t)), rel=1e-5)
    assert net.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * beta_d + beta_min)), rel=1e-6)
    t_of_sigma = (np.sqrt(beta_min**2 + 2 * beta_d * np.log(1 + SIGMAS**2)) - beta_min) / beta_d
    _check(net, 1.0, -SIGMAS, 1 / np.sqrt(SIGMAS**2 + 1), (M - 1) * t_of_sigma)


def test_ve_precond_matches_table_1() -> None:
    net = VEPrecond(img_resolution=8, img_channels=1, **SMALL)
    assert (net.sigma_min, net.sigma_max) == (0.02, 100)
    _check(net, 1.0, SIGMAS, 1.0, np.log(0.5 * SIGMAS))


def test_edm_precond_matches_table_1() -> None:
    sd = 0.5
    net = EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", **SMALL)
    _check(
        net, sd**2 / (SIGMAS**2 + sd**2), SIGMAS * sd / np.sqrt(SIGMAS**2 + sd**2),
        1 / np.sqrt(SIGMAS**2 + sd**2), np.log(SIGMAS) / 4,
    )


def test_iddpm_precond_matches_table_1() -> None:
    M, C1, C2 = 1000, 0.001, 0.008
    net = iDDPMPrecond(img_resolution=8, img_channels=1, model_channels=64, channel_mult=[1],
                       num_blocks=1, attn_resolutions=[])
    alpha_bar = lambda j: np.sin(0.5 * np.pi * j / M / (C2 + 1)) ** 2  # noqa: E731
    u = np.zeros(M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C1) - 1)
    np.testing.assert_allclose(net.u.double().numpy(), u, rtol=1e-3)  # float32, as EDM
    assert net.sigma_min == pytest.approx(u[M - 1], rel=1e-3)
    assert net.sigma_max == pytest.approx(u[0], rel=1e-4)
    index = np.abs(SIGMAS[:, None] - net.u.double().numpy()[None, :]).argmin(1)
    _check(net, 1.0, -SIGMAS, 1 / np.sqrt(SIGMAS**2 + 1), M - 1 - index)
    rounded = net.round_sigma(torch.tensor([0.5, 3.0]))
    assert set(rounded.tolist()) <= set(net.u.tolist())


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_equals_the_explicit_softmax_formula(channels_last: bool) -> None:
    torch.manual_seed(0)
    block = UNetBlock(in_channels=64, out_channels=64, emb_channels=8, attention=True, num_heads=2).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    h = torch.randn(3, 64, 4, 4)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    got = (block._attend(h) + h)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # Independent: per head, weights = softmax_k(q_.q . k_.k / sqrt(c)); out_c,q = sum_k w_qk v_c,k
    qkv = block.qkv(block.norm2(h)).double().reshape(3 * 2, 32, 3, 16)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(32), dim=2)
    a = torch.einsum("nqk,nck->ncq", w, v).reshape(3, 64, 4, 4)
    expected = block.proj(a.float()) + h
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_inputs_have_a_contiguous_last_dimension(channels_last: bool, monkeypatch) -> None:
    """Flash and memory-efficient attention need q, k, v with last-dimension stride 1; without it
    PyTorch silently runs its float32 math attention. The qkv convolution's output is channels-first
    on CUDA (group_norm returns channels-first memory there), channels-last here when x is."""
    import diffsampler.plugins.edm.layers as layers

    seen: list[tuple[int, ...]] = []
    real = layers.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.extend([q.stride(-1), k.stride(-1), v.stride(-1)])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    block = UNetBlock(in_channels=64, out_channels=64, emb_channels=8, attention=True, num_heads=1).eval()
    h = torch.randn(2, 64, 4, 4)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        block._attend(h)
    assert seen == [1, 1, 1]


@pytest.mark.parametrize("arch", ["SongUNet", "DhariwalUNet"])
def test_bottleneck_features_are_the_last_8x8_encoder_block(arch: str) -> None:
    torch.manual_seed(0)
    kw = (
        dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8])
        if arch == "SongUNet"
        else dict(model_channels=64, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[8])
    )
    net = EDMPrecond(img_resolution=16, img_channels=3, model_type=arch, **kw)
    model = EDMDenoiser(net)
    assert isinstance(model, ds.HasBottleneck)
    key = net.model.bottleneck_key
    assert key == "8x8_block1"  # the seed hooks enc['8x8_block3'] (DDPM++, 4 blocks) / ['8x8_block2'] (ADM, 3)
    captured = []
    hook = net.model.enc[key].register_forward_hook(lambda m, i, o: captured.append(o))
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 3.0])
    denoised, feats = model.denoise_with_features(x, sigma)
    hook.remove()
    assert feats.shape == (2, model.bottleneck_channels, 8, 8)
    assert torch.equal(feats, captured[0])
    assert torch.equal(denoised, model(x, sigma))


def test_class_labels_from_cond() -> None:
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=1, label_dim=4, model_type="SongUNet", **SMALL)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    model = EDMDenoiser(net)
    x, sigma = torch.randn(3, 1, 8, 8), torch.full((3,), 2.0)
    onehot = torch.nn.functional.one_hot(torch.tensor([2, 0, 3]), 4).float()
    expected = model(x, sigma, onehot)
    assert torch.equal(model(x, sigma, [2, 0, 3]), expected)
    assert torch.equal(model(x, sigma, torch.tensor([2, 0, 3])), expected)
    assert torch.equal(model(x, sigma, 1), model(x, sigma, [1, 1, 1]))
    assert not torch.equal(model(x, sigma, None), expected)  # EDM's zero label vector
    assert torch.equal(EDMDenoiser(net, class_label=1)(x, sigma), model(x, sigma, 1))
    with pytest.raises(ds.SamplingError, match=r"0\.\.3"):
        model(x, sigma, [0, 4, 1])
    with pytest.raises(ds.SamplingError, match="2 class labels for a batch of 3"):
        model(x, sigma, [0, 1])
    uncond = EDMDenoiser(EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", **SMALL))
    with pytest.raises(ds.SamplingError, match="unconditional"):
        uncond(x, sigma, 3)


def test_precision_channels_last_and_dtype() -> None:
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, model_type="SongUNet",
                     model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])
    exact = EDMDenoiser(net)(x, sigma)
    torch.testing.assert_close(EDMDenoiser(net, channels_last=True)(x, sigma), exact, rtol=1e-4, atol=1e-4)
    out64 = EDMDenoiser(net)(x.double(), sigma.double())
    assert out64.dtype == torch.float64
    for precision in ("bf16", "fp16"):
        out = EDMDenoiser(net, precision=precision)(x, sigma)
        assert out.dtype == torch.float32
        assert (out - exact).abs().max() < 0.1 * exact.abs().max()
    with pytest.raises(ds.OptionError):
        EDMDenoiser(net, precision="fp8")


def test_fp32_switches_tf32_off_for_cuda_and_restores_the_flags() -> None:
    from diffsampler.plugins.edm.denoiser import _cuda_fp32

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    with _cuda_fp32(False):
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
    with _cuda_fp32(True):
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    assert (cudnn.allow_tf32, matmul.allow_tf32) == before
    net = EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", **SMALL)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 5.0])
    assert torch.equal(EDMDenoiser(net, precision="tf32")(x, sigma), EDMDenoiser(net)(x, sigma))  # CPU


@pytest.mark.parametrize("up", [False, True])
def test_box_filter_resampling_equals_the_depthwise_convolution(up):
    """DDPM++'s [1, 1] filter runs as average pooling / nearest upsampling: the same values as
    EDM's depthwise (transposed) convolution, channels-last kept."""
    from diffsampler.plugins.edm.layers import Conv2d

    torch.manual_seed(0)
    layer = Conv2d(in_channels=8, out_channels=8, kernel=3, up=up, down=not up)
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    fast = layer(x)
    layer._box = False  # the general FIR path
    torch.testing.assert_close(fast, layer(x), rtol=0, atol=0)
    assert fast.is_contiguous(memory_format=torch.channels_last)
