"""iPNDM: Adams–Bashforth with the fixed uniform-step weights (Zhang & Chen 2023, DEIS)."""

from __future__ import annotations

import attrs

from diffsampler import option

from ._adams import AdamsBashforthSolver
from ._options import integer_in_range

# Classical Adams–Bashforth weights for equal steps, newest derivative first.
FIXED_WEIGHTS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@attrs.frozen(kw_only=True)
class IPNDMOptions:
    max_order: int = option(
        4, help="highest Adams–Bashforth order (1..4)", validator=integer_in_range(1, 4)
    )


class IPNDM(AdamsBashforthSolver):
    """iPNDM: ``x_{i+1} = x_i + h_i sum_j b_j d_{i-j}`` with the equal-step weights ``b_j``.

    Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS),
    Sec. 4 / Eq. 18 (improved PNDM): the classical Adams–Bashforth weights, applied in EDM's
    sigma with ``h_i = sigma_{i+1} - sigma_i`` whatever the step sizes, started with orders
    1, 2, 3. The weights are exact for equal steps only; on a smoothly varying schedule the
    global order is 2 (use ``ipndm_v`` for the exact variable-step weights).
    """

    Options = IPNDMOptions
    paper = (
        "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator, "
        "arXiv:2204.13902, Sec. 4 (iPNDM)"
    )

    def step_weights(self, sigmas: tuple[float, ...], i: int, order: int) -> tuple[float, ...]:
        h = sigmas[i + 1] - sigmas[i]
        return tuple(h * b for b in FIXED_WEIGHTS[order])
