"""Exact Adams–Bashforth weights on arbitrary grids, and the shared explicit multistep loop.

A ``k``-step Adams–Bashforth method advances ``x' = f`` from ``s_n`` to ``s_{n+1}`` by integrating
the polynomial through the last ``k`` values of ``f``::

    x_{n+1} = x_n + sum_j w_j f_{n-j},   w_j = int_{s_n}^{s_{n+1}} L_j(s) ds,

with ``L_j`` the Lagrange basis polynomials on the nodes ``s_n, s_{n-1}, ..., s_{n-k+1}``
(Hairer, Nørsett & Wanner, Solving ODEs I, Sec. III.5, variable step sizes). The weights are
exact for polynomials of degree ``< k`` on any grid, and on a uniform grid they are the classical
fixed weights (``3/2, -1/2``; ``23/12, -16/12, 5/12``; ``55/24, -59/24, 37/24, -9/24``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler import ODESolver, Run

from ._linear import combine

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["AdamsBashforthSolver", "adams_bashforth_weights", "gauss_legendre", "lagrange_basis"]


@cache
def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on ``[0, 1]`` (exact for degree ``2n - 1``)."""
    u, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (u + 1.0), 0.5 * w


def lagrange_basis(nodes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``L_j(points)`` for every node ``j``: shape ``[len(nodes), len(points)]``."""
    out = np.ones((len(nodes), len(points)))
    for j, node in enumerate(nodes):
        for m, other in enumerate(nodes):
            if m != j:
                out[j] *= (points - other) / (node - other)
    return out


def adams_bashforth_weights(nodes: Sequence[float], start: float, end: float) -> tuple[float, ...]:
    """``int_start^end L_j(s) ds`` for the Lagrange basis on ``nodes`` (float64, exact).

    Computed in the scaled variable ``u = (s - start) / (end - start)`` with Gauss–Legendre
    quadrature of enough points to be exact for the degree ``len(nodes) - 1``.
    """
    span = end - start
    scaled = (np.asarray(nodes, dtype=np.float64) - start) / span
    u, w = gauss_legendre(len(scaled) // 2 + 1)
    return tuple(float(v) for v in span * (lagrange_basis(scaled, u) @ w))


@attrs.frozen
class AdamsStep:
    """Step ``i``: ``weights`` on ``d_i, d_{i-1}, ...`` and the same divided by ``sigma_{i-j}``,
    the weights on the residuals ``r_j = x_j - D(x_j; sigma_j) = sigma_j d_j`` that are stored
    (one elementwise pass fewer per step than forming ``d`` first)."""

    weights: tuple[float, ...]
    residual_weights: tuple[float, ...]


class AdamsBashforthSolver(ODESolver):
    """Explicit multistep on ``d = dx/dsigma``: ``x_{i+1} = x_i + sum_j w_ij d_{i-j}``.

    One NFE per step. Step ``i`` uses ``min(max_order, i + 1)`` derivatives, so the first steps
    start the method at lower order. A subclass supplies ``step_weights(sigmas, i, order)``.
    """

    @property
    def order(self) -> int:
        return int(self.options.max_order)

    def step_weights(self, sigmas: tuple[float, ...], i: int, order: int) -> tuple[float, ...]:
        """The weights of ``d_i, d_{i-1}, ...`` (``order`` of them) for step ``i``."""
        raise NotImplementedError

    def prepare(self, sigmas: tuple[float, ...]) -> list[AdamsStep]:
        out = []
        for i in range(len(sigmas) - 1):
            weights = self.step_weights(sigmas, i, min(self.options.max_order, i + 1))
            scaled = tuple(w / sigmas[i - j] for j, w in enumerate(weights))
            out.append(AdamsStep(weights, scaled))
        return out

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        c: AdamsStep = run.coefficients[i]
        # r_i = x_i - D(x_i; sigma_i) = sigma_i d_i (AFS: D = x - sigma x / sqrt(1 + sigma^2))
        residual = x - run.denoise(x, run.sigmas[i])
        history: list[Any] = run.history
        history.append(residual)
        if len(history) > self.options.max_order:
            del history[0]
        # x_{i+1} = x_i + sum_j w_j d_{i-j} = x_i + sum_j (w_j / sigma_{i-j}) r_{i-j}
        newest_first = reversed(history[-len(c.residual_weights):])
        return combine([(1.0, x), *zip(c.residual_weights, newest_first, strict=True)])
