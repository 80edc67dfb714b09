"""Building blocks of EDM's networks (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", arXiv:2206.00364, Appendix F.2 and its code release).

Our own implementation. Parameter and buffer names and shapes equal those of NVlabs/edm
``training/networks.py``, so EDM state dicts load into these modules with ``strict=True``;
absent parameters (no bias, no kernel, no resampling filter) are registered as ``None`` as
EDM does, so the state-dict keys agree too. Every module records the keyword arguments it was
built with (``init_kwargs``), as EDM's ``persistence`` records do.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "UNetBlock",
    "recorded",
    "weight_init",
]

M = TypeVar("M", bound=type)


def recorded(cls: M) -> M:
    """Class decorator: keep the constructor's arguments as ``_init_args`` / ``_init_kwargs``.

    The outermost constructor call wins, so a subclass records its own arguments.
    """
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._init_args = copy.deepcopy(args)
        self._init_kwargs = copy.deepcopy(kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    cls.init_kwargs = property(  # type: ignore[attr-defined]
        lambda self: copy.deepcopy(self._init_kwargs), doc="The constructor's keyword arguments."
    )
    return cls


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> Tensor:
    """EDM's initialisers: xavier/kaiming, uniform/normal, scaled by fan-in/fan-out."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


def _param_or_none(value: Tensor | None) -> nn.Parameter | None:
    return nn.Parameter(value) if value is not None else None


@recorded
class Linear(nn.Module):
    """Fully connected layer (``weight [out, in]``, optional ``bias [out]``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)  # type: ignore[arg-type]
        self.bias = _param_or_none(weight_init([out_features], **fans) * init_bias if bias else None)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


@recorded
class Conv2d(nn.Module):
    """Convolution with optional 2x up- or downsampling by a separable FIR filter.

    ``kernel=0`` makes a pure resampling layer without weights. ``resample_filter`` is the 1-D
    filter (``[1, 1]`` box for DDPM++/ADM, ``[1, 3, 3, 1]`` for NCSN++); its outer product,
    normalised to sum 1, is the ``resample_filter`` buffer. ``fused_resample`` fuses the
    resampling with the convolution (NCSN++'s residual encoder uses it).
    """

    weight: nn.Parameter | None
    bias: nn.Parameter | None
    resample_filter: Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        k2 = kernel * kernel
        fans = dict(mode=init_mode, fan_in=in_channels * k2, fan_out=out_channels * k2)
        weight = (
            weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight  # type: ignore[arg-type]
            if kernel
            else None
        )
        self.weight = _param_or_none(weight)
        self.bias = _param_or_none(
            weight_init([out_channels], **fans) * init_bias if kernel and bias else None  # type: ignore[arg-type]
        )
        taps = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        filt = torch.outer(taps, taps)[None, None] / taps.sum() ** 2
        self.register_buffer("resample_filter", filt if up or down else None)
        # DDPM++'s and ADM's [1, 1] filter is a 2x2 box: downsampling is a 2x2 average pooling and
        # upsampling (the transposed convolution with 4 * box) repeats each pixel 2x2. Pooling and
        # nearest interpolation compute the same values as the depthwise convolutions without
        # their cost (cuDNN's depthwise kernels are slow, and Inductor can fuse these two).
        self._box = len(taps) == 2 and bool(taps[0] == taps[1])

    def _resample(self, x: Tensor, filt: Tensor, channels: int, *, up: bool, pad: int) -> Tensor:
        if self._box and pad == 0:
            return F.interpolate(x, scale_factor=2.0, mode="nearest") if up else F.avg_pool2d(x, 2)
        if up:
            return F.conv_transpose2d(
                x, (filt * 4).tile(channels, 1, 1, 1), groups=channels, stride=2, padding=pad
            )
        return F.conv2d(x, filt.tile(channels, 1, 1, 1), groups=channels, stride=2, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        filt = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (filt.shape[-1] - 1) // 2 if filt is not None else 0
        if self.fused_resample and w is not None and filt is not None and self.up:
            x = self._resample(x, filt, self.in_channels, up=True, pad=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and w is not None and filt is not None and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._resample(x, filt, self.out_channels, up=False, pad=0)
        else:
            if filt is not None and (self.up or self.down):
                x = self._resample(x, filt, self.in_channels, up=self.up, pad=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


@recorded
class GroupNorm(nn.Module):
    """Group normalisation with at least ``min_channels_per_group`` channels per group."""

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(
            x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
        )


@recorded
class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the noise label (DDPM++, ADM): ``[cos(x f_i), sin(x f_i)]``.

    ``f_i = (1 / max_positions) ** (i / (C/2 - endpoint))`` for ``i < C/2``.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = (1 / self.max_positions) ** (freqs / (half - (1 if self.endpoint else 0)))
        angles = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


@recorded
class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (NCSN++): buffer ``freqs ~ N(0, scale^2)``."""

    freqs: Tensor

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def _qkv_blocks(t: Tensor) -> Tensor:
    """EDM's interleaved qkv output channels ``[channel, {q, k, v}]`` as ``[{q, k, v}, channel]``
    (of a 1x1 convolution's weight ``[3c, c, 1, 1]`` or bias ``[3c]``)."""
    return t.reshape(t.shape[0] // 3, 3, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


@recorded
class UNetBlock(nn.Module):
    """Residual block with optional up/downsampling and self-attention (DDPM++, NCSN++, ADM).

    ``h = conv1(silu(norm1(conv0(silu(norm0(x))), emb)))``, the embedding entering as a shift
    (``adaptive_scale=False``) or scale-and-shift; then ``(h + skip(x)) * skip_scale``. With
    ``step_condition`` (SFD-v, Zhou et al. 2024, arXiv:2409.19681: one student for several
    NFEs) a second embedding, of the number of sampling steps, enters the same way through its
    own ``affine_step`` layer (the seed's ``sfd-main/models/networks_edm.py``). With
    attention, multi-head self-attention over the pixels follows, computed with
    :func:`torch.nn.functional.scaled_dot_product_attention` (scale ``1/sqrt(channels per
    head)``, as in EDM).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
        step_condition: bool = False,
    ) -> None:
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(
            in_channels=in_channels, out_channels=out_channels, kernel=3, up=up, down=down,
            resample_filter=resample_filter, **init,
        )
        self.affine = Linear(
            in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1),
            **init,
        )
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)
        self.affine_step = (
            Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
            if step_condition
            else None
        )

        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels=in_channels, out_channels=out_channels, kernel=kernel, up=up,
                down=down, resample_filter=resample_filter, **init,
            )

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(
                in_channels=out_channels, out_channels=out_channels * 3, kernel=1,
                **(init_attn if init_attn is not None else init),
            )
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def _attend(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        # EDM's qkv channel index is (head * c/heads + channel) * 3 + {q, k, v}. The 1x1 weights are
        # reordered to ({q, k, v}, head, channel) (the same products): q, k and v are then blocks
        # of channels, and the attention's inputs [b, heads, h*w, c/heads] are views of the pixels-
        # major qkv with a contiguous last dimension, as flash / memory-efficient attention need
        # (otherwise PyTorch falls back to its float32 "math" attention).
        assert self.qkv.weight is not None  # a 1x1 convolution, never a pure resampling layer
        weight = _qkv_blocks(self.qkv.weight).to(x.dtype)
        bias = _qkv_blocks(self.qkv.bias).to(x.dtype) if self.qkv.bias is not None else None
        qkv = F.conv2d(self.norm2(x), weight, bias)  # [b, 3c, h, w]
        # Pixels-major [b, h, w, 3c]: free when qkv is channels-last, one copy when it is not, as
        # on CUDA, where group_norm always returns channels-first memory (eager and compiled).
        qkv = qkv.permute(0, 2, 3, 1).contiguous().reshape(b, h * w, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [b, heads, h*w, c/heads], last stride 1
        out = F.scaled_dot_product_attention(q, k, v)  # [b, heads, h*w, c/heads]
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)  # channels-last layout
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()  # keep a channels-first network channels-first
        return self.proj(out)

    def forward(self, x: Tensor, emb: Tensor, emb_step: Tensor | None = None) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        step = None
        if emb_step is not None:
            if self.affine_step is None:
                raise ValueError("this network has no step condition (it was not built for SFD-v)")
            step = self.affine_step(emb_step)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm1(h), scale + 1)
            if step is not None:  # the seed applies the step's scale and shift after the noise's
                scale, shift = step.chunk(2, dim=1)
                h = torch.addcmul(shift, h, scale + 1)
            h = F.silu(h)
        else:
            h = F.silu(self.norm1(h + params if step is None else h + params + step))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:
            h = (self._attend(h) + h) * self.skip_scale
        return h
