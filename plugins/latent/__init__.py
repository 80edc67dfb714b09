"""Latent diffusion models through diffusers (entry point ``latent``; extra ``[diffusers]``).

Models registered here:

* ``sd-v1.5``: Stable Diffusion v1.5 with classifier-free guidance (``prompt``/``prompts_file``,
  ``negative_prompt``, ``guidance_rate`` 7.5; one guided evaluation = 2 NFE, as the seed counts);
* ``ldm-lsun-bedroom256``, ``ldm-ffhq256``: the seed's unconditional LDMs, loaded natively from
  its CompVis checkpoints (EMA weights, VQ-f4 autoencoder; downloaded into the cache when online)
  or from a diffusers folder;
* ``latent``: any diffusers folder (``UNet2DModel``/``UNet2DConditionModel`` + VQ/KL autoencoder),
  or an unconditional CompVis VQ-LDM checkpoint (``.ckpt``, release ``.zip``, or a folder holding
  ``model.ckpt``) with its YAML ``config``; ``ds.get_model(file)`` finds both.

All are :class:`~diffsampler.TimeMapped` (the ``discrete`` schedule works) and
:class:`~diffsampler.Decodable` (samples are decoded to images). No torch at import time.
"""

from __future__ import annotations

from pathlib import Path

from diffsampler import hookimpl
from diffsampler.hookspecs import Register
from diffsampler.weights import offline

from .catalog import NAMED, LatentFileOptions, Named, options_class
from .download import cached_archive, cached_checkpoint
from .factories import latent_file, local_folder, named_factory


def _where(entry: Named) -> str:
    """Where the weights of ``entry`` would come from now (for ``list`` / ``info``)."""
    local = local_folder(entry)
    if local:
        return "local copy set" if Path(local).exists() else f"${entry.env_var} names a missing {local}"
    if entry.hub_id:
        return f"hub {entry.hub_id} when online"
    if cached_checkpoint(entry).is_file() or cached_archive(entry).is_file():
        return "seed checkpoint cached"
    if offline():
        return "seed checkpoint not local: a download is refused offline (DIFFSAMPLER_OFFLINE)"
    return "seed checkpoint not local: downloaded on first use"


@hookimpl
def register_models(register: Register) -> None:
    for entry in NAMED.values():
        where = _where(entry)
        register(entry.name, named_factory(entry), summary=f"{entry.summary} [{where}]",
                 options=options_class(entry))
    register("latent", latent_file, summary="any diffusers latent model folder (LDM / Stable Diffusion) "
             "or CompVis VQ-LDM checkpoint",
             options=LatentFileOptions)
