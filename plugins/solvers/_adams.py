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
from typing import TYPE_CHECKING, Any

import numpy as np
from diffsampler import ODESolver, Run

from ._linear import combine

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["AdamsBashforthSolver", "adams_bashforth_weights", "lagrange_basis"]


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
    u, w = np.polynomial.legendre.leggauss(len(scaled) // 2 + 1)
    u, w = 0.5 * (u + 1.0), 0.5 * w  # from [-1, 1] to [0, 1]
    return tuple(float(v) for v in span * (lagrange_basis(scaled, u) @ w))


class AdamsBashforthSolver(ODESolver):
    """Explicit multistep on ``d = dx/dsigma``: ``x_{i+1} = x_i + sum_j w_ij d_{i-j}``.

    One NFE per step. Step ``i`` uses ``min(max_order, i + 1)`` derivatives, so the first steps
    start the method at lower order. A subclass supplies ``step_weights(sigmas, i, order)``.
    """

    @property
    def order(self) -> int:  # type: ignore[override]
        return int(self.options.max_order)

    def step_weights(self, sigmas: tuple[float, ...], i: int, order: int) -> tuple[float, ...]:
        """The weights of ``d_i, d_{i-1}, ...`` (``order`` of them) for step ``i``."""
        raise NotImplementedError

    def prepare(self, sigmas: tuple[float, ...]) -> list[tuple[float, ...]]:
        max_order = self.options.max_order
        return [self.step_weights(sigmas, i, min(max_order, i + 1)) for i in range(len(sigmas) - 1)]

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        weights: tuple[float, ...] = run.coefficients[i]
        d = run.derivative(x, run.sigmas[i])  # d_i = (x_i - D(x_i; sigma_i)) / sigma_i
        history: list[Any] = run.history
        history.append(d)
        if len(history) > self.options.max_order:
            del history[0]
        # x_{i+1} = x_i + sum_j w_j d_{i-j}, the newest derivative first
        return combine([(1.0, x), *zip(weights, reversed(history[-len(weights):]), strict=True)])
