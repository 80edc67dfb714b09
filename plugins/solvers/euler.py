"""Euler's method on the probability-flow ODE (equivalent to DDIM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffsampler import ODESolver, Run

if TYPE_CHECKING:
    from torch import Tensor


class Euler(ODESolver):
    """Euler (DDIM): first order, one NFE per step."""

    paper = (
        "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models, arXiv:2010.02502; "
        "as the Euler step of Karras et al. 2022 (EDM), Alg. 1 without the correction"
    )
    order = 1

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        d = run.derivative(x, sigma)  # dx/dsigma = (x - D(x; sigma)) / sigma
        return x + (sigma_next - sigma) * d
