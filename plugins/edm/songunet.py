"""SongUNet: the DDPM++ and NCSN++ U-Nets of Song et al. 2021 ("Score-Based Generative Modeling
through Stochastic Differential Equations", arXiv:2011.13456) in EDM's form (Karras et al. 2022,
arXiv:2206.00364, Table 7 / Appendix F.2: configurations "DDPM++" and "NCSN++").

DDPM++: ``embedding_type='positional', channel_mult_noise=1, encoder_type='standard',
resample_filter=[1, 1]``. NCSN++: ``embedding_type='fourier', channel_mult_noise=2,
encoder_type='residual', resample_filter=[1, 3, 3, 1]``. Both use ``decoder_type='standard'``.
Module names (``enc['32x32_block0']`` ...) equal EDM's so its state dicts load strictly.
``step_condition=True`` adds SFD-v's step embedding (``map_step``, ``map_step_layer0/1`` and
each block's ``affine_step``, named as in the SFD seed); without it the network is EDM's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    recorded,
)

__all__ = ["SongUNet", "bottleneck_key"]


def _channels(module: nn.Module) -> int:
    """A layer's ``out_channels`` (an int attribute of our Conv2d and UNetBlock)."""
    return int(module.out_channels)  # type: ignore[arg-type]


def bottleneck_key(enc: nn.ModuleDict, img_resolution: int) -> str:
    """The encoder block whose output AMED reads: the last ``UNetBlock`` at 8x8.

    (Zhou et al. 2024, AMED, arXiv:2312.00094: the seed hooks ``enc['8x8_block3']`` of EDM's
    DDPM++ and ``enc['8x8_block2']`` of ADM, i.e. the last encoder block at 8x8.) Networks that
    never reach 8x8 use the last block at their lowest resolution.
    """
    blocks = [name for name, m in enc.items() if isinstance(m, UNetBlock)]
    at8 = [name for name in blocks if name.startswith("8x8_")]
    return at8[-1] if at8 else blocks[-1]


@recorded
class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net. ``forward(x, noise_labels, class_labels, augment_labels)``."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
        step_condition: bool = False,
    ) -> None:
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be standard, skip or residual, got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be standard or skip, got {decoder_type!r}")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init: dict[str, Any] = dict(init_mode="xavier_uniform")
        init_zero: dict[str, Any] = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn: dict[str, Any] = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block: dict[str, Any] = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn, step_condition=step_condition,
        )

        # Mapping network: noise label (+ class, augmentation labels) -> embedding.
        if embedding_type == "positional":
            self.map_noise: nn.Module = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = (
            Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        )
        self.map_augment = (
            Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init)
            if augment_dim
            else None
        )
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_step: nn.Module | None = None
        if step_condition:  # SFD-v: the step count through its own copy of the noise mapping
            if embedding_type == "positional":
                self.map_step = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
            else:
                self.map_step = FourierEmbedding(num_channels=noise_channels)
            self.map_step_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
            self.map_step_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        in_channels=caux, out_channels=caux, kernel=0, down=True,
                        resample_filter=resample_filter,
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(
                        in_channels=caux, out_channels=cout, kernel=1, **init
                    )
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        in_channels=caux, out_channels=cout, kernel=3, down=True,
                        resample_filter=resample_filter, fused_resample=True, **init,
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=res in attn_resolutions, **block
                )
        skips = [_channels(m) for name, m in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(in_channels=cout, out_channels=cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout,
                    attention=idx == num_blocks and res in attn_resolutions, **block,
                )
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        in_channels=out_channels, out_channels=out_channels, kernel=0, up=True,
                        resample_filter=resample_filter,
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(
                    in_channels=cout, out_channels=out_channels, kernel=3, **init_zero
                )
        self.bottleneck_key = bottleneck_key(self.enc, img_resolution)

    @property
    def bottleneck_channels(self) -> int:
        return _channels(self.enc[self.bottleneck_key])

    def _embed(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None
    ) -> Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos] order
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: class_labels are required")
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def _embed_steps(self, step_condition: Tensor | None) -> Tensor | None:
        """SFD-v's embedding of the number of sampling steps (``None`` without a condition)."""
        if step_condition is None:
            return None
        if self.map_step is None:
            raise ValueError("this network has no step condition (it was not built for SFD-v)")
        emb = self.map_step(step_condition)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos] as above
        emb = F.silu(self.map_step_layer0(emb))
        return F.silu(self.map_step_layer1(emb))

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        *,
        step_condition: Tensor | None = None,
        return_features: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``F_theta(c_in x; c_noise)``; with ``return_features`` also the bottleneck output.

        ``step_condition``: ``[batch]`` step counts for an SFD-v network (else ``None``).
        """
        emb = self._embed(x, noise_labels, class_labels, augment_labels)
        emb_step = self._embed_steps(step_condition)
        features = x

        skips: list[Tensor] = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb, emb_step) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
            if name == self.bottleneck_key:
                features = x

        out: Tensor | None = None
        tmp = x
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb, emb_step)
        assert out is not None
        return (out, features) if return_features else out
