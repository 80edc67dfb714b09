"""The ADM and Consistency-Models networks the ``guided`` plugin knows by name, and the options
of its models (torch-free).

Architectures are the settings the diff-sampler seed loads them with
(``models/guided_diffusion/cg_model_loader.py``, ``models/cm/cm_model_loader.py``): ADM
ImageNet 256 with its noisy-image classifier (Dhariwal & Nichol 2021, arXiv:2105.05233) and the
EDM-trained LSUN-Bedroom 256 network of Consistency Models (Song et al. 2023, arXiv:2303.01469).
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from diffsampler import choice, option, positive

__all__ = [
    "ADM_FORMAT",
    "CLASSIFIER_FORMAT",
    "DEFAULT_GUIDANCE_RATE",
    "NAMED",
    "ADMFileOptions",
    "CMNamedOptions",
    "Named",
    "NamedOptions",
    "Weights",
    "options_class",
]

ADM_FORMAT = "diffsampler.adm"
CLASSIFIER_FORMAT = "diffsampler.adm-classifier"
OPENAI = "https://openaipublic.blob.core.windows.net/"


@attrs.frozen(kw_only=True)
class Weights:
    """One published ``.pt`` state dict: where it comes from and how to rebuild its module."""

    file: str
    url: str
    env_var: str
    network: dict[str, Any]


# guided-diffusion's ImageNet 256 settings (learned variance: 6 output channels).
_ADM256 = dict(
    image_size=256, in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
    attention_resolutions=[8, 16, 32], channel_mult=[1, 1, 2, 2, 4, 4], num_classes=1000,
    num_heads=4, num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
)
_CLASSIFIER256 = dict(
    image_size=256, in_channels=3, model_channels=128, out_channels=1000, num_res_blocks=2,
    attention_resolutions=[8, 16, 32], channel_mult=[1, 1, 2, 2, 4, 4], num_head_channels=64,
    use_scale_shift_norm=True, resblock_updown=True,
)
# Consistency Models' EDM LSUN 256 settings (flash-attention layout: 2-D qkv, qkv-first heads).
_CM256 = dict(
    image_size=256, in_channels=3, model_channels=256, out_channels=3, num_res_blocks=2,
    attention_resolutions=[8, 16, 32], channel_mult=[1, 1, 2, 2, 4, 4], num_classes=None,
    num_heads=4, num_head_channels=64, use_scale_shift_norm=False, resblock_updown=True,
    attention_dims=2, attention_order="qkv_first",
)


@attrs.frozen(kw_only=True)
class Named:
    """A named model: its network, its preconditioning and (ADM) its classifier."""

    name: str
    precond: str  # "vp" (ADM, epsilon prediction) or "edm" (Consistency Models' EDM)
    model: Weights
    classifier: Weights | None
    summary: str
    seed_name: str  # the seed's --dataset_name


NAMED: dict[str, Named] = {
    n.name: n
    for n in (
        Named(
            name="adm-imagenet256", precond="vp", seed_name="imagenet256",
            model=Weights(file="256x256_diffusion.pt", url=OPENAI + "diffusion/jul-2021/256x256_diffusion.pt",
                          env_var="DIFFSAMPLER_ADM_IMAGENET256", network=_ADM256),
            classifier=Weights(file="256x256_classifier.pt",
                               url=OPENAI + "diffusion/jul-2021/256x256_classifier.pt",
                               env_var="DIFFSAMPLER_ADM_IMAGENET256_CLASSIFIER", network=_CLASSIFIER256),
            summary="ADM ImageNet 256x256 class-conditional (1000 classes) + classifier guidance, VP "
                    "(openai/guided-diffusion)",
        ),
        Named(
            name="cm-lsun-bedroom256", precond="edm", seed_name="lsun_bedroom",
            model=Weights(file="edm_bedroom256_ema.pt", url=OPENAI + "consistency/edm_bedroom256_ema.pt",
                          env_var="DIFFSAMPLER_CM_LSUN_BEDROOM256", network=_CM256),
            classifier=None,
            summary="EDM-trained LSUN-Bedroom 256x256 unconditional, ADM U-Net (openai/consistency_models)",
        ),
    )
}

#: the classifier-guidance scale of the seed's ImageNet-256 runs
DEFAULT_GUIDANCE_RATE = 4.0
_PRECISION_HELP = "arithmetic: fp32 (default), fp16 or bf16 (autocast)"
_LABEL_HELP = "class used when no cond is given (class-conditional networks)"
_RATE_HELP = "classifier-guidance scale s: eps - s * sqrt(1 - alpha_bar) * grad log p(y|x_t) (0: off)"


def _optional_int(value: object) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise TypeError(f"expected an integer or None, got {value!r}")


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _optional_path(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"expected a path, got {value!r}")


@attrs.frozen(kw_only=True)
class _Common:
    precision: str = option("fp32", help=_PRECISION_HELP, validator=choice("fp32", "fp16", "bf16"))
    channels_last: bool = option(False, help="run the U-Net in channels-last memory format")
    sigma_min: float | None = option(
        None, help="lowest noise level (default: VP sigma(1e-3) ~ 0.0105, EDM 0.002)",
        converter=_optional_float, validator=attrs.validators.optional(positive),
    )
    sigma_max: float | None = option(
        None, help="highest noise level (default: VP sigma(1) ~ 152, EDM 80)",
        converter=_optional_float, validator=attrs.validators.optional(positive),
    )
    device: str = option("cpu", help="device to load the network on (it then follows the inputs)")


_CLIP_HELP = "clamp D(x; sigma) to [-1, 1] for VP models (the seed's CGPrecond does)"


@attrs.frozen(kw_only=True)
class NamedOptions(_Common):
    """Options of the named ADM network (class-conditional, with its classifier)."""

    guidance_rate: float = option(
        DEFAULT_GUIDANCE_RATE, help=_RATE_HELP + "; the seed's ImageNet-256 runs use 4", converter=float,
        validator=attrs.validators.ge(0.0),
    )
    class_label: int | None = option(None, help=_LABEL_HELP, converter=_optional_int)
    clip: bool = option(True, help=_CLIP_HELP)
    path: str | None = option(
        None, help="local copy of the network .pt (default: env var, cache, download)",
        converter=_optional_path,
    )
    classifier_path: str | None = option(
        None, help="local copy of the classifier .pt (default: env var, cache, download)",
        converter=_optional_path,
    )
    download: bool = option(True, help="download missing weights into the cache")


@attrs.frozen(kw_only=True)
class CMNamedOptions(_Common):
    """Options of the named Consistency-Models network (unconditional, EDM: no guidance, no clamp)."""

    path: str | None = option(
        None, help="local copy of the network .pt (default: env var, cache, download)",
        converter=_optional_path,
    )
    download: bool = option(True, help="download missing weights into the cache")


def options_class(entry: Named) -> type:
    """The options a named network takes: guidance and labels only where it has a classifier."""
    return NamedOptions if entry.classifier is not None else CMNamedOptions


@attrs.frozen(kw_only=True)
class ADMFileOptions(_Common):
    """Options of the generic ``adm`` model (any guided-diffusion-style state dict)."""

    guidance_rate: float | None = option(
        None, help=_RATE_HELP + " (default: 4, the seed's, with a classifier_path; off without)",
        converter=_optional_float, validator=attrs.validators.optional(attrs.validators.ge(0.0)),
    )
    class_label: int | None = option(None, help=_LABEL_HELP, converter=_optional_int)
    clip: bool = option(True, help=_CLIP_HELP)
    path: str = option(help="the network's .pt state dict (loaded with weights_only=True)",
                       converter=_optional_path)
    config: str | None = option(
        None, help=f"JSON {{'format': '{ADM_FORMAT}', 'precond': 'vp'|'edm', 'network': {{...}}}} "
                   "(default: the .pt's path with .json)", converter=_optional_path,
    )
    classifier_path: str | None = option(None, help="classifier .pt (enables classifier guidance)",
                                         converter=_optional_path)
    classifier_config: str | None = option(
        None, help=f"classifier JSON {{'format': '{CLASSIFIER_FORMAT}', 'network': {{...}}}} "
                   "(default: its .pt's path with .json)", converter=_optional_path,
    )
