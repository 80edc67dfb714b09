"""EDM networks (SongUNet, DhariwalUNet) with safe checkpoint loading (entry point ``edm``).

Models registered here:

* ``edm-cifar10``, ``edm-ffhq``, ``edm-afhqv2``, ``edm-imagenet64``: the pretrained networks
  of Karras et al. 2022 (arXiv:2206.00364), loaded from EDM's own pickles without executing
  them (weights from the ``path`` option, ``DIFFSAMPLER_EDM_<NAME>``, the cache, or a download);
* ``edm``: any EDM file given by ``path`` (also what ``diffsampler.get_model(path)`` uses);
* ``digits``: a small EDM model trained on scikit-learn's digits, shipped with the package.

Commands: ``diffsampler train-denoiser`` trains such a small model (see :mod:`.train`).

This module imports no torch: ``diffsampler list`` loads every plugin, and the factories
import the networks when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .catalog import PRETRAINED, DigitsOptions, EDMFileOptions, PretrainedOptions
from .factories import digits, edm_file, pretrained_factory

if TYPE_CHECKING:
    import typer


@hookimpl
def register_models(register: Register) -> None:
    from .download import weights_file

    for entry in PRETRAINED.values():
        where = "weights local" if weights_file(entry).local_copy() else "weights not local: downloaded on first use"
        register(entry.name, pretrained_factory(entry), summary=f"{entry.summary} [{where}]",
                 options=PretrainedOptions)
    register(
        "edm",
        edm_file,
        summary="any EDM network file: EDM pickle (read safely), or weights + JSON config",
        options=EDMFileOptions,
    )
    register(
        "digits",
        digits,
        summary="embedded EDM SongUNet trained on scikit-learn digits, 1x8x8, 10 classes (CPU-fast)",
        options=DigitsOptions,
    )


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from .cli import add_commands

    add_commands(app)
