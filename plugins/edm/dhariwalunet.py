"""DhariwalUNet: the ADM U-Net of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image
Synthesis", arXiv:2105.05233) in EDM's form (Karras et al. 2022, arXiv:2206.00364, config "ADM",
used for the class-conditional ImageNet-64 model).

Scale-and-shift conditioning (``adaptive_scale``), 64 channels per attention head, Kaiming
initialisation; module names equal EDM's so its state dicts load strictly.
``step_condition=True`` adds SFD-v's step embedding (as in :mod:`.songunet`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock, recorded
from .songunet import _channels, bottleneck_key

__all__ = ["DhariwalUNet"]


@recorded
class DhariwalUNet(nn.Module):
    """ADM U-Net. ``forward(x, noise_labels, class_labels, augment_labels)``."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
        step_condition: bool = False,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init: dict[str, Any] = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero: dict[str, Any] = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block: dict[str, Any] = dict(
            emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
            init_zero=init_zero, step_condition=step_condition,
        )

        # Mapping network.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = (
            Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero)
            if augment_dim
            else None
        )
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = (
            Linear(
                in_features=label_dim, out_features=emb_channels, bias=False,
                init_mode="kaiming_normal", init_weight=math.sqrt(label_dim),
            )
            if label_dim
            else None
        )
        self.map_step: PositionalEmbedding | None = None
        if step_condition:  # SFD-v: the step count through its own copy of the noise mapping
            self.map_step = PositionalEmbedding(num_channels=model_channels)
            self.map_step_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
            self.map_step_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=res in attn_resolutions, **block
                )
        skips = [_channels(m) for m in self.enc.values()]

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
                    in_channels=cin, out_channels=cout, attention=res in attn_resolutions, **block
                )
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)
        self.bottleneck_key = bottleneck_key(self.enc, img_resolution)

    @property
    def bottleneck_channels(self) -> int:
        return _channels(self.enc[self.bottleneck_key])

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
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: class_labels are required")
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)
        emb_step = None
        if step_condition is not None:
            if self.map_step is None:
                raise ValueError("this network has no step condition (it was not built for SFD-v)")
            emb_step = self.map_step_layer0(self.map_step(step_condition))
            emb_step = F.silu(self.map_step_layer1(F.silu(emb_step)))

        skips: list[Tensor] = []
        features = x
        for name, block in self.enc.items():
            x = block(x, emb, emb_step) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
            if name == self.bottleneck_key:
                features = x
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb, emb_step)
        out = self.out_conv(F.silu(self.out_norm(x)))
        return (out, features) if return_features else out
