"""DEIS: exponential-integrator multistep with polynomial extrapolation (tAB and rhoAB)."""

from __future__ import annotations

import math

import attrs
import numpy as np

from diffsampler import choice, option
from diffsampler.plugins.schedules.time_uniform import VPFit

from ._adams import AdamsBashforthSolver, adams_bashforth_weights, gauss_legendre, lagrange_basis
from ._options import integer_in_range

# tAB's time variable: EDM's VP fit to the seed's fixed range, whatever the model's range.
DEIS_VP = VPFit.fit(sigma_min=0.002, sigma_max=80.0, epsilon_s=1e-3)
_PANEL_WIDTH = 0.5  # in log sigma; the integrand is analytic in |Im log sigma| < pi/2
_PANEL_NODES = 24


def tab_weights(nodes_t: np.ndarray, sigma_start: float, sigma_end: float) -> tuple[float, ...]:
    """``int_{t(sigma_start)}^{t(sigma_end)} sigma'(tau) L_j(tau) dtau`` for the basis on ``nodes_t``.

    Substituting ``sigma = e^v`` gives ``int L_j(t(e^v)) e^v dv``, whose integrand is smooth
    in ``v``; composite Gauss–Legendre in ``v`` (panels of width <= 0.5, 24 nodes each) is exact
    to float64 rounding, where the seed used a 10,000-point rectangle rule in ``t``.
    """
    v_start, v_end = math.log(sigma_start), math.log(sigma_end)
    panels = max(1, math.ceil(abs(v_end - v_start) / _PANEL_WIDTH))
    u, w = gauss_legendre(_PANEL_NODES)
    edges = np.linspace(v_start, v_end, panels + 1)
    width = np.diff(edges)
    v = (edges[:-1, None] + width[:, None] * u[None, :]).ravel()
    weights = (width[:, None] * w[None, :]).ravel()
    integrand = lagrange_basis(nodes_t, DEIS_VP.t(np.exp(v))) * np.exp(v)
    return tuple(float(c) for c in integrand @ weights)


@attrs.frozen(kw_only=True)
class DEISOptions:
    max_order: int = option(
        4, help="highest extrapolation order (1..4)", validator=integer_in_range(1, 4)
    )
    deis_mode: str = option(
        "tab",
        help="tab: polynomial in VP time t (tAB); rhoab: polynomial in sigma (rhoAB)",
        validator=choice("tab", "rhoab"),
    )


class DEIS(AdamsBashforthSolver):
    """DEIS in EDM's variables: ``x_{i+1} = x_i + sum_j C_ij d_{i-j}``, ``d = (x - D) / sigma``.

    Zhang & Chen 2023, Eq. 14–15 (tAB) and Eq. 16 (rhoAB). The ODE ``dx/dsigma = d`` is
    integrated with ``d`` replaced by its Lagrange interpolant through the last
    ``k = min(max_order, i + 1)`` points:

    - ``tab``: interpolation in the VP time ``t`` of EDM's VP fit to ``[0.002, 80]`` (as the
      seed, whatever the model's range): ``C_ij = int sigma'(t) L_j(t) dt``;
    - ``rhoab``: interpolation in ``rho = sigma`` itself (DEIS's rho is EDM's sigma):
      ``C_ij`` are the exact variable-step Adams–Bashforth weights, the method of ``ipndm_v``.
    """

    recommended_schedule = ("time_uniform", {"rho": 2.0})  # the seed README: DEIS, time_uniform rho=2
    Options = DEISOptions
    paper = (
        "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator, "
        "arXiv:2204.13902, Eq. 14-16 (tAB, rhoAB)"
    )

    def step_weights(self, sigmas: tuple[float, ...], i: int, order: int) -> tuple[float, ...]:
        nodes = [sigmas[i - j] for j in range(order)]  # sigma_i, sigma_{i-1}, ...
        if order == 1:  # Euler: the constant interpolant integrates to the step itself
            return (sigmas[i + 1] - sigmas[i],)
        if self.options.deis_mode == "rhoab":
            return adams_bashforth_weights(nodes, sigmas[i], sigmas[i + 1])
        return tab_weights(DEIS_VP.t(np.asarray(nodes)), sigmas[i], sigmas[i + 1])
