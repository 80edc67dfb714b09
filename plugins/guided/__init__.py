"""ADM with classifier guidance and Consistency Models' EDM network (entry point ``guided``).

Models registered here:

* ``adm-imagenet256``: ADM ImageNet 256x256 (Dhariwal & Nichol 2021, arXiv:2105.05233) with its
  noisy-image classifier for classifier guidance (``guidance_rate``, default 4 as in the seed);
* ``cm-lsun-bedroom256``: the EDM-trained LSUN-Bedroom 256 network of Consistency Models
  (Song et al. 2023, arXiv:2303.01469);
* ``adm``: any guided-diffusion-style ``.pt`` state dict with a ``diffsampler.adm`` JSON config.

Weights are OpenAI's published ``.pt`` files, read with ``torch.load(weights_only=True)``.
This module imports no torch (``diffsampler list`` loads every plugin).
"""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .catalog import NAMED, ADMFileOptions, options_class
from .factories import adm_file, named_factory, weights_present


@hookimpl
def register_models(register: Register) -> None:
    for entry in NAMED.values():
        where = "weights local" if weights_present(entry) else "weights not local: downloaded on first use"
        register(entry.name, named_factory(entry), summary=f"{entry.summary} [{where}]",
                 options=options_class(entry))
    register(
        "adm",
        adm_file,
        summary="any ADM/guided-diffusion .pt state dict with a diffsampler.adm JSON (+ optional classifier)",
        options=ADMFileOptions,
    )
