"""Built-in time schedules (entry point ``schedules``)."""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .polynomial import Polynomial


@hookimpl
def register_schedules(register: Register) -> None:
    register(
        "polynomial", Polynomial, summary="EDM's polynomial schedule (rho)", options=Polynomial.Options
    )
