"""The ADM U-Net and its noisy-image classifier (Dhariwal & Nichol 2021, arXiv:2105.05233).

Written for diffsampler with the module tree of OpenAI's ``guided_diffusion/unet.py``
(``UNetModel``, ``EncoderUNetModel``), so every parameter has the same name and shape and the
published ``.pt`` state dicts load strictly. The Consistency-Models variant (Song et al. 2023,
arXiv:2303.01469) differs only in its attention: 2-D 1x1 convolutions for ``qkv``/``proj_out``
and heads split after q, k, v (``attention_dims=2, attention_order="qkv_first"``).
Inference only: no gradient checkpointing, no fp16 torso (autocast does that job).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ADMClassifier", "ADMUNet", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]``, ``f_i = max_period^(-i/half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.reshape(-1, 1).float() * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """32-group normalisation computed at least in float32 (in the parameters' precision)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype)).type(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with timestep embedding (scale-shift norm optional, up/down optional)."""

    takes_emb = True

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int | None = None, *,
        scale_shift: bool, up: bool = False, down: bool = False, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        out = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.updown = up or down
        self.h_upd: nn.Module
        self.x_upd: nn.Module
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(
            _norm(out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out, out, 3, padding=1)
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def _attend(qkv: Tensor, heads: int, order: str) -> Tensor:
    """Softmax attention over positions; ``qkv`` is ``[b, 3 * heads * ch, T]`` laid out as
    heads-then-qkv (``legacy``, guided-diffusion) or qkv-then-heads (``qkv_first``).

    guided-diffusion's ``QKVAttention(Legacy)`` (``softmax(q.k / sqrt(ch)) v``, softmax in float32)
    computed with :func:`torch.nn.functional.scaled_dot_product_attention`, whose fused kernels keep
    the softmax in float32 too. q, k and v are views of one positions-major copy with a contiguous
    last dimension, as flash / memory-efficient attention need (else PyTorch runs its float32 math
    attention)."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    rows = qkv.transpose(1, 2).contiguous()  # [b, T, 3 * heads * ch]
    if order == "legacy":
        q, k, v = rows.reshape(b, length, heads, 3, ch).permute(3, 0, 2, 1, 4)
    else:
        q, k, v = rows.reshape(b, length, 3, heads, ch).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)  # [b, heads, T, ch], scale 1/sqrt(ch)
    return out.transpose(2, 3).reshape(b, heads * ch, length)


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions (guided-diffusion's ``AttentionBlock``)."""

    def __init__(self, channels: int, *, heads: int, head_channels: int, dims: int, order: str) -> None:
        super().__init__()
        self.heads = heads if head_channels == -1 else channels // head_channels
        self.order = order
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.norm = _norm(channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj_out = conv(channels, channels, 1)
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        qkv = _pointwise(self.qkv, self.norm(x)).reshape(b, 3 * c, -1)
        h = _attend(qkv, self.heads, self.order).reshape(b, c, *spatial)
        return x + _pointwise(self.proj_out, h)


def _pointwise(conv: nn.Module, x: Tensor) -> Tensor:
    """A 1x1 convolution (guided-diffusion's Conv1d over flattened pixels, or Conv2d) applied to
    ``[b, c, h, w]`` as the same Conv2d: the image keeps its shape and memory layout (GroupNorm
    over the flattened pixels equals GroupNorm over the image)."""
    assert isinstance(conv, nn.Conv1d | nn.Conv2d)
    weight = conv.weight if conv.weight.dim() == 4 else conv.weight.unsqueeze(-1)
    return F.conv2d(x, weight, conv.bias)


class EmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also get the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class _Encoder(nn.Module):
    """The shared down path: ``time_embed``, ``input_blocks``, ``middle_block``."""

    def __init__(
        self, *, image_size: int, in_channels: int, model_channels: int, num_res_blocks: int,
        attention_resolutions: Sequence[int], channel_mult: Sequence[float], num_heads: int,
        num_head_channels: int, use_scale_shift_norm: bool, resblock_updown: bool,
        conv_resample: bool, attention_dims: int, attention_order: str, dropout: float,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        emb = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        attn: dict[str, Any] = dict(heads=num_heads, head_channels=num_head_channels, dims=attention_dims, order=attention_order)
        res: dict[str, Any] = dict(scale_shift=use_scale_shift_norm, dropout=dropout)
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        self.skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, int(mult * model_channels), **res)]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(EmbedSequential(*layers))
                self.skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = ResBlock(ch, emb, ch, down=True, **res) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                self.skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(
            ResBlock(ch, emb, **res), AttentionBlock(ch, **attn), ResBlock(ch, emb, **res)
        )
        self.channels, self.ds, self.emb_channels = ch, ds, emb
        self._attn, self._res = attn, res

    def _embed(self, timesteps: Tensor) -> Tensor:
        dtype: torch.dtype = self.time_embed[0].weight.dtype  # type: ignore[assignment]
        return self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))


class ADMUNet(_Encoder):
    """guided-diffusion's ``UNetModel``: ``forward(x, timesteps, y)`` returns ``out_channels``
    maps (with learned variance: eps then the variance interpolation, 2 x in_channels)."""

    def __init__(
        self, *, image_size: int, in_channels: int = 3, model_channels: int, out_channels: int,
        num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[float],
        num_classes: int | None = None, num_heads: int = 1, num_head_channels: int = -1,
        num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
        resblock_updown: bool = False, conv_resample: bool = True, attention_dims: int = 1,
        attention_order: str = "legacy", dropout: float = 0.0,
    ) -> None:
        super().__init__(
            image_size=image_size, in_channels=in_channels, model_channels=model_channels,
            num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
            channel_mult=channel_mult, num_heads=num_heads, num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
            conv_resample=conv_resample, attention_dims=attention_dims,
            attention_order=attention_order, dropout=dropout,
        )
        self.out_channels = out_channels
        self.num_classes = num_classes
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, self.emb_channels)
        attn: dict[str, Any] = dict(self._attn, heads=num_heads if num_heads_upsample == -1 else num_heads_upsample)
        skips = list(self.skip_channels)
        ch, ds, emb = self.channels, self.ds, self.emb_channels
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), emb, int(model_channels * mult), **self._res)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == num_res_blocks:
                    layers.append(
                        ResBlock(ch, emb, ch, up=True, **self._res) if resblock_updown else Upsample(ch, conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self._embed(timesteps)
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this ADM U-Net is class-conditional: give class labels y")
            emb = emb + self.label_emb(y)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (the classifier's head)."""

    def __init__(self, spatial: int, embed_dim: int, head_channels: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.heads = embed_dim // head_channels

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(_attend(self.qkv_proj(x), self.heads, "qkv_first"))
        return x[:, :, 0]


class ADMClassifier(_Encoder):
    """guided-diffusion's ``EncoderUNetModel`` with ``pool="attention"``: logits of ``p(y | x_t)``."""

    def __init__(
        self, *, image_size: int, in_channels: int = 3, model_channels: int, out_channels: int,
        num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[float],
        num_head_channels: int = 64, use_scale_shift_norm: bool = True,
        resblock_updown: bool = True, conv_resample: bool = True,
    ) -> None:
        super().__init__(
            image_size=image_size, in_channels=in_channels, model_channels=model_channels,
            num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
            channel_mult=channel_mult, num_heads=1, num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
            conv_resample=conv_resample, attention_dims=1, attention_order="legacy", dropout=0.0,
        )
        self.num_classes = out_channels
        self.out = nn.Sequential(
            _norm(self.channels), nn.SiLU(),
            AttentionPool2d(image_size // self.ds, self.channels, num_head_channels, out_channels),
        )

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        emb = self._embed(timesteps)
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h.type(x.dtype))
