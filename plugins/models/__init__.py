"""Built-in models (entry point ``models``)."""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .empirical import EmpiricalOptions, empirical
from .gmm import GMMOptions, gmm


@hookimpl
def register_models(register: Register) -> None:
    register(
        "gmm",
        gmm,
        summary="analytic Gaussian mixture, exact denoiser, 3x32x32 (default model)",
        options=GMMOptions,
    )
    register(
        "empirical",
        empirical,
        summary="optimal denoiser of a finite data set (default: 8x8 digits)",
        options=EmpiricalOptions,
    )
