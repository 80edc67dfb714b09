"""The EDM networks diffsampler knows by name, and the options of its EDM models (torch-free).

The four pretrained networks are those of Karras et al. 2022 (arXiv:2206.00364), published at
https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/ and used by the diff-sampler seed.
"""

from __future__ import annotations

import attrs

from diffsampler import choice, in_range, option, positive

__all__ = [
    "BASE_URL",
    "PRETRAINED",
    "DigitsOptions",
    "EDMFileOptions",
    "Pretrained",
    "PretrainedOptions",
]

BASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


@attrs.frozen(kw_only=True)
class Pretrained:
    """A published EDM network: its file and what it must contain."""

    name: str
    file: str
    resolution: int
    channels: int
    label_dim: int
    precond: str
    architecture: str
    summary: str

    @property
    def env_var(self) -> str:
        """The environment variable that may point at a local copy, e.g. ``DIFFSAMPLER_EDM_CIFAR10``."""
        stem = self.name.removeprefix("edm-").upper().replace("-", "_")
        return f"DIFFSAMPLER_EDM_{stem}"


PRETRAINED: dict[str, Pretrained] = {
    p.name: p
    for p in (
        Pretrained(
            name="edm-cifar10", file="edm-cifar10-32x32-uncond-vp.pkl", resolution=32, channels=3,
            label_dim=0, precond="VPPrecond", architecture="SongUNet",
            summary="EDM CIFAR-10 32x32 unconditional, VP, DDPM++ (NVlabs/edm)",
        ),
        Pretrained(
            name="edm-ffhq", file="edm-ffhq-64x64-uncond-vp.pkl", resolution=64, channels=3,
            label_dim=0, precond="VPPrecond", architecture="SongUNet",
            summary="EDM FFHQ 64x64 unconditional, VP, DDPM++ (NVlabs/edm)",
        ),
        Pretrained(
            name="edm-afhqv2", file="edm-afhqv2-64x64-uncond-vp.pkl", resolution=64, channels=3,
            label_dim=0, precond="VPPrecond", architecture="SongUNet",
            summary="EDM AFHQv2 64x64 unconditional, VP, DDPM++ (NVlabs/edm)",
        ),
        Pretrained(
            name="edm-imagenet64", file="edm-imagenet-64x64-cond-adm.pkl", resolution=64, channels=3,
            label_dim=1000, precond="EDMPrecond", architecture="DhariwalUNet",
            summary="EDM ImageNet 64x64 class-conditional (1000 classes), EDM precond, ADM (NVlabs/edm)",
        ),
    )
}

_PRECISION_HELP = "arithmetic: fp32 (exact, default), tf32 (CUDA tensor cores), fp16 or bf16 (autocast)"
_SIGMA_MIN_HELP = "lowest noise level sampled (EDM's default 0.002)"
_SIGMA_MAX_HELP = "highest noise level sampled (EDM's default 80)"
_LABEL_HELP = "class used when no cond is given (conditional networks; none: EDM's zero label)"
_DEVICE_HELP = "device to load the network on (it then follows the inputs' device)"


def _optional_int(value: object) -> int | None:
    if value is None or isinstance(value, int):
        return value
    raise TypeError(f"expected an integer or None, got {value!r}")


def _optional_path(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    import os

    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"expected a path, got {value!r}")


@attrs.frozen(kw_only=True)
class _Inference:
    precision: str = option("fp32", help=_PRECISION_HELP, validator=choice("fp32", "tf32", "fp16", "bf16"))
    channels_last: bool = option(False, help="run the network in channels-last memory format")
    sigma_min: float = option(0.002, help=_SIGMA_MIN_HELP, validator=positive)
    sigma_max: float = option(80.0, help=_SIGMA_MAX_HELP, validator=positive)
    device: str = option("cpu", help=_DEVICE_HELP)


@attrs.frozen(kw_only=True)
class EDMFileOptions(_Inference):
    """Options of the generic ``edm`` model (any EDM file)."""

    path: str = option(
        help="EDM pickle (.pkl), or .safetensors/.pt weights with a JSON config, or that JSON",
        converter=_optional_path,
    )
    key: str = option("ema", help="which network of an EDM pickle (ema, net, ...)")
    class_label: int | None = option(None, help=_LABEL_HELP, converter=_optional_int)


@attrs.frozen(kw_only=True)
class PretrainedOptions(_Inference):
    """Options of the named pretrained EDM models."""

    path: str | None = option(
        None, help="local copy of the network pickle (default: env var, cache, download)",
        converter=_optional_path,
    )
    download: bool = option(True, help="download the pickle into the cache when it is absent")
    class_label: int | None = option(None, help=_LABEL_HELP, converter=_optional_int)


@attrs.frozen(kw_only=True)
class DigitsOptions(_Inference):
    """Options of the embedded ``digits`` model."""

    class_label: int | None = option(
        None, help="digit 0-9 drawn when no cond is given (none: any digit)",
        validator=attrs.validators.optional(in_range(0, 9)), converter=_optional_int,
    )
