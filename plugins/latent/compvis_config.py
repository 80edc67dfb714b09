"""The architecture of a CompVis latent-diffusion checkpoint, read from its YAML config (torch-free).

Rombach et al. 2022 (arXiv:2112.10752) release unconditional LDMs as a PyTorch-Lightning
checkpoint (``model.ckpt``) plus a config (``models/ldm/configs/latent-diffusion/*.yaml``):
``model.params`` holds the DDPM schedule (``linear_start``, ``linear_end``, ``timesteps``,
``beta_schedule``), ``unet_config.params`` the eps U-Net (``openaimodel.UNetModel``) and
``first_stage_config.params`` the VQ autoencoder (``VQModelInterface``). The seed
(zju-pi/diff-sampler ``sample.py``) samples ``lsun_bedrooms-ldm-vq-4.yaml`` and
``ffhq-ldm-vq-4.yaml``; both architectures are built in (:data:`SEED_CONFIGS`), so the named models
need no YAML. Only what the native loader can build is accepted; the rest is refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from diffsampler.errors import ModelLoadError

__all__ = ["SEED_CONFIGS", "LDMConfig", "UNetConfig", "VQConfig", "parse_config", "read_config"]


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@attrs.frozen(kw_only=True)
class UNetConfig:
    """``openaimodel.UNetModel`` parameters of an unconditional eps U-Net (legacy attention)."""

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...] = attrs.field(converter=_ints)
    num_res_blocks: int
    attention_resolutions: tuple[int, ...] = attrs.field(converter=_ints)  # downsampling factors
    num_head_channels: int


@attrs.frozen(kw_only=True)
class VQConfig:
    """``VQModelInterface`` parameters (taming's Encoder/Decoder with a VectorQuantizer2)."""

    embed_dim: int
    n_embed: int
    z_channels: int
    resolution: int
    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...] = attrs.field(converter=_ints)
    num_res_blocks: int


@attrs.frozen(kw_only=True)
class LDMConfig:
    """An unconditional VQ latent diffusion model: schedule, U-Net and autoencoder."""

    linear_start: float
    linear_end: float
    timesteps: int
    scale_factor: float
    use_ema: bool
    unet: UNetConfig
    vq: VQConfig


def _seed_config() -> LDMConfig:
    """The model section of the seed's ``lsun_bedrooms-ldm-vq-4.yaml`` / ``ffhq-ldm-vq-4.yaml``."""
    unet = UNetConfig(image_size=64, in_channels=3, out_channels=3, model_channels=224, channel_mult=(1, 2, 3, 4),
                      num_res_blocks=2, attention_resolutions=(8, 4, 2), num_head_channels=32)
    vq = VQConfig(embed_dim=3, n_embed=8192, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128,
                  ch_mult=(1, 2, 4), num_res_blocks=2)
    return LDMConfig(linear_start=0.0015, linear_end=0.0195, timesteps=1000, scale_factor=1.0, use_ema=True,
                     unet=unet, vq=vq)


#: The two named models' architectures (their YAML model sections are identical).
SEED_CONFIGS: dict[str, LDMConfig] = {name: _seed_config() for name in ("ldm-lsun-bedroom256", "ldm-ffhq256")}


class _Refused(ValueError):
    pass


def _refuse_unless(ok: bool, what: str) -> None:
    if not ok:
        raise _Refused(what)


def _params(node: Any, where: str) -> Mapping[str, Any]:
    _refuse_unless(isinstance(node, Mapping), f"{where} is missing")
    params = node.get("params", {})
    _refuse_unless(isinstance(params, Mapping), f"{where}.params is not a mapping")
    return params


def _unet(node: Any) -> UNetConfig:
    p = _params(node, "unet_config")
    _refuse_unless(not p.get("use_spatial_transformer", False) and p.get("context_dim") is None,
                   "a cross-attention (text/class-conditional) U-Net")
    _refuse_unless(p.get("num_classes") is None, "a class-conditional U-Net (num_classes)")
    _refuse_unless(not p.get("use_scale_shift_norm", False), "use_scale_shift_norm: true")
    _refuse_unless(not p.get("resblock_updown", False), "resblock_updown: true")
    _refuse_unless(not p.get("use_new_attention_order", False), "use_new_attention_order: true")
    _refuse_unless(p.get("conv_resample", True) and p.get("dims", 2) == 2, "conv_resample false or dims != 2")
    _refuse_unless(int(p.get("num_head_channels", -1)) > 0,
                   "num_head_channels unset (a fixed num_heads per block)")
    mult = _ints(p.get("channel_mult", (1, 2, 4, 8)))
    _refuse_unless(mult[0] == 1, "channel_mult not starting with 1")
    return UNetConfig(
        image_size=int(p["image_size"]), in_channels=int(p["in_channels"]), out_channels=int(p["out_channels"]),
        model_channels=int(p["model_channels"]), channel_mult=mult, num_res_blocks=int(p["num_res_blocks"]),
        attention_resolutions=p["attention_resolutions"], num_head_channels=int(p["num_head_channels"]),
    )


def _vq(node: Any) -> VQConfig:
    _refuse_unless(isinstance(node, Mapping) and str(node.get("target", "")).endswith("VQModelInterface"),
                   "a first stage other than VQModelInterface (KL autoencoders: use a diffusers folder)")
    p = _params(node, "first_stage_config")
    dd = p.get("ddconfig", {})
    _refuse_unless(not dd.get("double_z", False), "ddconfig.double_z: true")
    _refuse_unless(not list(dd.get("attn_resolutions", [])), "ddconfig.attn_resolutions not empty")
    _refuse_unless(p.get("remap") is None, "a remapped codebook (remap)")
    mult = _ints(dd["ch_mult"])
    _refuse_unless(mult[0] == 1, "ddconfig.ch_mult not starting with 1")
    return VQConfig(
        embed_dim=int(p["embed_dim"]), n_embed=int(p["n_embed"]), z_channels=int(dd["z_channels"]),
        resolution=int(dd["resolution"]), in_channels=int(dd["in_channels"]), out_ch=int(dd["out_ch"]),
        ch=int(dd["ch"]), ch_mult=mult, num_res_blocks=int(dd["num_res_blocks"]),
    )


def parse_config(cfg: Mapping[str, Any], *, where: str = "config") -> LDMConfig:
    """The :class:`LDMConfig` of a CompVis YAML config (as a mapping); a
    :class:`ModelLoadError` naming what is not supported."""
    try:
        model = cfg.get("model", {})
        _refuse_unless(str(model.get("target", "")).endswith("LatentDiffusion"), "no model.target LatentDiffusion")
        p = _params(model, "model")
        _refuse_unless(p.get("cond_stage_config") == "__is_unconditional__",
                       "a conditional model (cond_stage_config); text models load from a diffusers folder")
        _refuse_unless(p.get("beta_schedule", "linear") == "linear", f"beta_schedule {p.get('beta_schedule')!r}")
        _refuse_unless(p.get("parameterization", "eps") == "eps", "a non-eps parameterization")
        _refuse_unless(p.get("given_betas") is None, "given_betas")
        _refuse_unless(not p.get("scale_by_std", False), "scale_by_std: true")
        return LDMConfig(
            linear_start=float(p.get("linear_start", 1e-4)), linear_end=float(p.get("linear_end", 2e-2)),
            timesteps=int(p.get("timesteps", 1000)), scale_factor=float(p.get("scale_factor", 1.0)),
            use_ema=bool(p.get("use_ema", True)), unet=_unet(p.get("unet_config")), vq=_vq(p.get("first_stage_config")),
        )
    except _Refused as exc:
        raise ModelLoadError(f"{where}: not supported by the native LDM loader: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{where}: not a CompVis latent-diffusion config ({type(exc).__name__}: {exc})") from None


def read_config(path: str | os.PathLike[str]) -> LDMConfig:
    """Parse a CompVis YAML config file (``yaml.safe_load``; no objects are built from it)."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelLoadError(f"config {os.fspath(path)}: not a YAML text file (path= takes the .ckpt/.zip, "
                             "config= its YAML)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"config {os.fspath(path)}: cannot read: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, Mapping):
        raise ModelLoadError(f"config {os.fspath(path)}: not a CompVis latent-diffusion config")
    return parse_config(cfg, where=f"config {os.fspath(path)}")
