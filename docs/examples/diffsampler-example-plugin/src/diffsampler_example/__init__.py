"""An example diffsampler plugin: the explicit midpoint method (second order, 2 NFE per step)."""

from __future__ import annotations

import math

import attrs

import diffsampler as ds


@attrs.frozen(kw_only=True)
class MidpointOptions:
    log_midpoint: bool = ds.option(True, help="take the midpoint in log-sigma (else in sigma)")


class Midpoint(ds.ODESolver):
    """Explicit midpoint rule on dx/dsigma = (x - D) / sigma."""

    Options = MidpointOptions
    paper = "Runge 1895; any numerical analysis text (explicit midpoint method)"
    order = 2
    evals_per_step = 2

    def step(self, run: ds.Run, x, i):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        if self.options.log_midpoint:
            mid = math.sqrt(sigma * sigma_next)
        else:
            mid = 0.5 * (sigma + sigma_next)
        x_mid = x + (mid - sigma) * run.derivative(x, sigma)
        return x + (sigma_next - sigma) * run.derivative(x_mid, mid)


@ds.hookimpl
def register_solvers(register):
    register("midpoint", Midpoint, summary="explicit midpoint, order 2 (example plugin)",
             options=MidpointOptions)
