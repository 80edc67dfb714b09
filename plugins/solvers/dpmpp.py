"""Multistep DPM-Solver++ (Lu et al. 2022), orders 1-3, in EDM's variables."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np

from diffsampler import ODESolver, Run, option

from ._exponential import check_thresholding, model_output, predict_x0_option, thresholding_option
from ._linear import combine
from ._options import integer_in_range

if TYPE_CHECKING:
    from torch import Tensor


@attrs.frozen(kw_only=True)
class DPMPPOptions:
    max_order: int = option(3, help="highest multistep order (1..3)", validator=integer_in_range(1, 3))
    predict_x0: bool = predict_x0_option()
    lower_order_final: bool = option(
        True, help="lower the order on the last steps (order <= steps left), as the seed"
    )
    thresholding: str | None = thresholding_option()

    def __attrs_post_init__(self) -> None:
        check_thresholding(self)


def step_order(i: int, num_steps: int, max_order: int, lower_order_final: bool) -> int:
    """The seed's order of step ``i``: warm-up ``i + 1``, then ``max_order`` (or the steps left)."""
    if not lower_order_final:
        return min(max_order, i + 1)
    return i + 1 if i + 1 < max_order else min(max_order, num_steps - (i + 1))


def multistep_coefficients(
    sigmas: tuple[float, ...], i: int, order: int, predict_x0: bool
) -> tuple[float, tuple[float, ...]]:
    """``(a, c)`` with ``x_{i+1} = a x_i + sum_j c_j m_{i-j}`` (Lu et al. 2022b, Alg. 2 and
    its third-order extension in the official code), in ``lambda = -log sigma``.

    ``m`` is the data prediction (``predict_x0``) or the noise prediction. The finite
    differences ``D1_0 = (m_i - m_{i-1}) / r0`` etc. are expanded into weights on the ``m``.
    """
    lam = {j: -math.log(sigmas[j]) for j in range(i - order + 1, i + 2)}  # lambda = -log sigma
    t = sigmas[i + 1]
    h = lam[i + 1] - lam[i]
    e = np.eye(order)  # basis: m_i, m_{i-1}, m_{i-2}
    if predict_x0:  # x_{i+1} = (t/s) x_i - phi_1 m + phi_2 D1 - phi_3 D2
        phi_1 = math.expm1(-h)
        phi_2 = phi_1 / h + 1.0
        a, scale, sign = t / sigmas[i], 1.0, 1.0
    else:  # x_{i+1} = x_i - t (phi_1 m + phi_2 D1 + phi_3 D2)
        phi_1 = math.expm1(h)
        phi_2 = phi_1 / h - 1.0
        a, scale, sign = 1.0, t, -1.0
    phi_3 = phi_2 / h - 0.5
    c = -phi_1 * e[0]
    if order >= 2:
        r0 = (lam[i] - lam[i - 1]) / h
        d1_0 = (e[0] - e[1]) / r0
        if order == 2:
            c = c - 0.5 * phi_1 * d1_0
        else:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_1 = (e[1] - e[2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            c = c + sign * phi_2 * d1 - phi_3 * d2
    return a, tuple(float(v) for v in scale * c)


class DPMSolverPP(ODESolver):
    """Multistep DPM-Solver++ (2M/3M): one NFE per step, exponential integrator in lambda.

    Lu et al. 2022b, Algorithm 2 (multistep second order) and the third-order multistep of the
    official code, in EDM's variables (``alpha = 1``, ``lambda = -log sigma``) as in the seed.
    Step ``i`` has order ``i + 1`` during the warm-up; with ``lower_order_final`` it never
    exceeds the number of steps left (so the last step is first order), as in the seed.
    """

    Options = DPMPPOptions
    recommended_schedule: ClassVar[tuple[str, dict[str, Any]]] = ("logsnr", {})  # the seed README pairs DPM-Solver++ with logSNR
    paper = (
        "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic "
        "Models, arXiv:2211.01095, Algorithm 2 (multistep)"
    )

    @property
    def order(self) -> int:
        return int(self.options.max_order)

    def prepare(self, sigmas: tuple[float, ...]) -> list[tuple[float, tuple[float, ...]]]:
        o = self.options
        return [
            multistep_coefficients(
                sigmas, i, step_order(i, len(sigmas), o.max_order, o.lower_order_final),
                o.predict_x0,
            )
            for i in range(len(sigmas) - 1)
        ]

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        a, weights = run.coefficients[i]
        history: list[Any] = run.history
        history.append(model_output(run, x, run.sigmas[i], self.options))  # m_i
        if len(history) > self.options.max_order:
            del history[0]
        # x_{i+1} = a x_i + sum_j c_j m_{i-j}, the newest model output first
        return combine([(a, x), *zip(weights, reversed(history[-len(weights):]), strict=True)])
