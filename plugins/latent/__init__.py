"""Latent diffusion models through diffusers (entry point ``latent``; extra ``[diffusers]``).

Models registered here:

* ``sd-v1.5``: Stable Diffusion v1.5 with classifier-free guidance (``prompt``/``prompts_file``,
  ``negative_prompt``, ``guidance_rate`` 7.5; one guided evaluation = 2 NFE, as the seed counts);
* ``ldm-lsun-bedroom256``, ``ldm-ffhq256``: the seed's unconditional LDMs, loaded natively from
  its CompVis checkpoints (EMA weights, VQ-f4 autoencoder; downloaded into the cache when online)
  or from a diffusers folder;
* ``latent``: any diffusers folder (``UNet2DModel``/``UNet2DConditionModel`` + VQ/KL autoencoder),
  or an unconditional CompVis VQ-LDM checkpoint with its YAML ``config``.

All are :class:`~diffsampler.TimeMapped` (the ``discrete`` schedule works) and
:class:`~diffsampler.Decodable` (samples are decoded to images). No torch at import time.
"""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .catalog import NAMED, LatentFileOptions, options_class
from .download import cached_checkpoint
from .factories import latent_file, local_folder, named_factory


@hookimpl
def register_models(register: Register) -> None:
    for entry in NAMED.values():
        if local_folder(entry):
            where = "local copy set"
        elif entry.hub_id:
            where = f"hub {entry.hub_id} when online"
        elif cached_checkpoint(entry).is_file():
            where = "seed checkpoint cached"
        else:
            where = "seed checkpoint not local: downloaded on first use"
        register(entry.name, named_factory(entry), summary=f"{entry.summary} [{where}]",
                 options=options_class(entry))
    register("latent", latent_file, summary="any diffusers latent model folder (LDM / Stable Diffusion) "
             "or CompVis VQ-LDM checkpoint",
             options=LatentFileOptions)
