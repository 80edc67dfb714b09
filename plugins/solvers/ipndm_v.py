"""iPNDM-v: Adams–Bashforth with the exact variable-step weights."""

from __future__ import annotations

import attrs

from diffsampler import option

from ._adams import AdamsBashforthSolver, adams_bashforth_weights
from ._options import integer_in_range


@attrs.frozen(kw_only=True)
class IPNDMVOptions:
    max_order: int = option(
        4, help="highest Adams–Bashforth order (1..4)", validator=integer_in_range(1, 4)
    )


class IPNDMV(AdamsBashforthSolver):
    """Variable-step Adams–Bashforth in sigma on ``d = (x - D) / sigma``.

    ``x_{i+1} = x_i + sum_j w_j d_{i-j}`` with ``w_j = int_{sigma_i}^{sigma_{i+1}} L_j`` over the
    Lagrange basis on ``sigma_i, ..., sigma_{i-k+1}`` (Hairer, Nørsett & Wanner, Solving ODEs I,
    Sec. III.5): exact for polynomials of degree ``< k`` on any grid, equal to iPNDM's weights
    on a uniform grid. Unlike the seed's ``ipndm_v``, whose order-3 and order-4 weights are
    second order on non-uniform grids, these are exact; the same method as DEIS rhoAB.
    """

    Options = IPNDMVOptions
    paper = (
        "Zhang & Chen 2023, DEIS, arXiv:2204.13902, Sec. 4 (iPNDM), with the variable-step "
        "Adams–Bashforth weights of Hairer, Nørsett & Wanner, Solving ODEs I, Sec. III.5"
    )

    def step_weights(self, sigmas: tuple[float, ...], i: int, order: int) -> tuple[float, ...]:
        nodes = [sigmas[i - j] for j in range(order)]  # sigma_i, sigma_{i-1}, ...
        return adams_bashforth_weights(nodes, sigmas[i], sigmas[i + 1])
