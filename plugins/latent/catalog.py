"""Latent diffusion models the ``latent`` plugin knows by name, and their options (torch-free).

The seed (zju-pi/diff-sampler ``sample.py``) samples LDM LSUN-Bedroom and FFHQ (Rombach et al.
2022, arXiv:2112.10752; unconditional, VQ-f4, 64x64x3 latents) and Stable Diffusion v1.5
(text-conditional, KL-f8, 64x64x4 latents, classifier-free guidance 7.5 on MS-COCO prompts).
diffsampler runs them through diffusers' classes: from a diffusers-format folder (or hub id), or,
for the unconditional LDMs, natively from the seed's CompVis checkpoint (``model.ckpt`` or the
release zip, downloaded into the cache when online; see :mod:`.compvis`).
"""

from __future__ import annotations

import os

import attrs

from diffsampler import choice, option, positive

__all__ = ["NAMED", "VQ_F4_ENV", "VQ_F4_URL", "LatentFileOptions", "Named", "NamedOptions", "UnconditionalOptions", "options_class"]


@attrs.frozen(kw_only=True)
class Named:
    """A named latent model: where its diffusers folder comes from."""

    name: str
    hub_id: str | None
    env_var: str
    text: bool
    guidance_rate: float
    summary: str
    seed_url: str  # the checkpoint the seed downloads (CompVis/runwayml format)

    @property
    def native(self) -> bool:
        """Whether the seed's CompVis checkpoint itself loads (the unconditional VQ LDMs)."""
        return not self.text


NAMED: dict[str, Named] = {
    n.name: n
    for n in (
        Named(
            name="sd-v1.5", hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
            env_var="DIFFSAMPLER_SD_V15", text=True, guidance_rate=7.5,
            seed_url="https://huggingface.co/runwayml/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.ckpt",
            summary="Stable Diffusion v1.5, 512x512 text-to-image (4x64x64 latents), classifier-free guidance",
        ),
        Named(
            name="ldm-lsun-bedroom256", hub_id=None, env_var="DIFFSAMPLER_LDM_LSUN_BEDROOM256",
            text=False, guidance_rate=1.0,
            seed_url="https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip",
            summary="LDM LSUN-Bedroom 256x256 unconditional, VQ-f4 (3x64x64 latents)",
        ),
        Named(
            name="ldm-ffhq256", hub_id=None, env_var="DIFFSAMPLER_LDM_FFHQ256", text=False,
            guidance_rate=1.0, seed_url="https://ommer-lab.com/files/latent-diffusion/ffhq.zip",
            summary="LDM FFHQ 256x256 unconditional, VQ-f4 (3x64x64 latents)",
        ),
    )
}


#: The seed's separate VQ-f4 first stage (``torch_utils/download_util.py``: ``vq-f4``), used only
#: when an LDM checkpoint carries no ``first_stage_model.*`` weights.
VQ_F4_URL = "https://ommer-lab.com/files/latent-diffusion/vq-f4.zip"
VQ_F4_ENV = "DIFFSAMPLER_LDM_VQ_F4"


def _optional_path(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"expected a path, got {value!r}")


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@attrs.frozen(kw_only=True)
class _Common:
    precision: str = option("fp32", help="arithmetic: fp32, fp16 or bf16 (autocast)",
                            validator=choice("fp32", "fp16", "bf16"))
    channels_last: bool = option(False, help="run the U-Net in channels-last memory format")
    sigma_min: float | None = option(None, help="lowest noise level (default: the model's step 0)",
                                     converter=_optional_float,
                                     validator=attrs.validators.optional(positive))
    sigma_max: float | None = option(None, help="highest noise level (default: its last step)",
                                     converter=_optional_float,
                                     validator=attrs.validators.optional(positive))
    device: str = option("cpu", help="device to load the networks on (they then follow the inputs)")


@attrs.frozen(kw_only=True)
class _Text(_Common):
    guidance_rate: float | None = option(
        None, help="classifier-free guidance scale w: eps_u + w (eps_c - eps_u); 1: no guidance, "
                   "one network call (default: 7.5 for Stable Diffusion, as in the seed; text models only)",
        converter=_optional_float,
    )
    prompt: str | None = option(None, help="text prompt (text-conditional models)")
    prompts_file: str | None = option(
        None, help="text file, one prompt a line: --labels seed picks prompt seed mod lines, "
                   "--labels K prompt K, --labels random a random prompt per seed", converter=_optional_path,
    )
    negative_prompt: str = option("", help="the unconditional / negative prompt of CFG (text models)")


@attrs.frozen(kw_only=True)
class NamedOptions(_Text):
    """Options of the named text-to-image models."""

    path: str | None = option(None, help="local diffusers folder (default: env var, then the hub id)",
                              converter=_optional_path)


_VQ_HELP = ("CompVis checkpoints without first_stage_model.* weights: the VQ first stage's checkpoint "
            "(model.ckpt or its .zip)")
_EMA_HELP = ("CompVis checkpoints: sample the U-Net's EMA weights (model_ema.*), as the seed does "
             "(default: the config's use_ema, true for the seed's LDMs); false: the raw training weights")


@attrs.frozen(kw_only=True)
class UnconditionalOptions(_Common):
    """Options of the named unconditional LDMs (no prompt, no guidance)."""

    path: str | None = option(
        None, help="the seed's CompVis checkpoint (model.ckpt, or the release .zip) or a diffusers folder "
                   "(default: the env var, the cache, else a download of the seed's zip)",
        converter=_optional_path,
    )
    ema: bool | None = option(None, help=_EMA_HELP)
    vq_path: str | None = option(None, help=_VQ_HELP + f" (default: ${VQ_F4_ENV}, the cache, else a download "
                                 "of the seed's vq-f4.zip)", converter=_optional_path)
    download: bool = option(True, help="download the seed's checkpoint into the cache when it is absent")


def options_class(entry: Named) -> type:
    """The options a named model takes: the text ones only for a text model."""
    return NamedOptions if entry.text else UnconditionalOptions


@attrs.frozen(kw_only=True)
class LatentFileOptions(_Text):
    """Options of the generic ``latent`` model (text options apply to text models only)."""

    path: str = option(help="a diffusers folder (unet/, vae/ or vqvae/, scheduler/, "
                            "text_encoder/ + tokenizer/ for text models), a hub id (org/name), or an "
                            "unconditional CompVis VQ-LDM checkpoint (.ckpt or its .zip; with config=)",
                       converter=_optional_path)
    config: str | None = option(None, help="CompVis checkpoints: their YAML config (architecture, schedule)",
                                converter=_optional_path)
    ema: bool | None = option(None, help=_EMA_HELP)
    vq_path: str | None = option(None, help=_VQ_HELP, converter=_optional_path)
