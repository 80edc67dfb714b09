"""Built-in ODE solvers (entry point ``solvers``)."""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .euler import Euler


@hookimpl
def register_solvers(register: Register) -> None:
    register("euler", Euler, summary="Euler / DDIM, order 1, 1 NFE per step", options=Euler.Options)
