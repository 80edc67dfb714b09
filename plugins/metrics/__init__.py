"""Built-in metrics (entry point ``metrics``)."""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .analytic import FrechetOptions, exact_error, exact_frechet


@hookimpl
def register_metrics(register: Register) -> None:
    register("l2-exact", exact_error, summary="RMS error to the exact ODE endpoint (analytic models)")
    register(
        "fd-exact", exact_frechet, options=FrechetOptions,
        summary="Frechet distance to the exact data moments (analytic models)",
    )
