"""Built-in models (entry point ``models``)."""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .gmm import GMMOptions, gmm


@hookimpl
def register_models(register: Register) -> None:
    register(
        "gmm",
        gmm,
        summary="analytic Gaussian mixture, exact denoiser, 3x32x32 (default model)",
        options=GMMOptions,
    )
