"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, EDM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffsampler import ODESolver, Run

if TYPE_CHECKING:
    from torch import Tensor


class Heun(ODESolver):
    """Heun (explicit trapezoidal rule): order 2, two NFE per step.

    Karras et al. 2022, Algorithm 1 (lines 4-8). As in the seed, the correction is applied on
    every step, the last one included (EDM skips it when ``sigma_{i+1} = 0``; our sigmas are
    positive).
    """

    paper = (
        "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, "
        "arXiv:2206.00364, Algorithm 1"
    )
    order = 2
    evals_per_step = 2

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        h = sigma_next - sigma
        # d_i = (x_i - D(x_i; sigma_i)) / sigma_i, kept as the residual r_i = sigma_i d_i
        # (the division folds into the host-side weights: one elementwise pass fewer)
        r = x - run.denoise(x, sigma)
        x_euler = x.add(r, alpha=h / sigma)  # x_{i+1}' = x_i + h d_i
        r_next = x_euler - run.denoise(x_euler, sigma_next)  # sigma_{i+1} d_i'
        # x_{i+1} = x_i + h (d_i + d_i') / 2
        return x.add(r, alpha=0.5 * h / sigma).add_(r_next, alpha=0.5 * h / sigma_next)
