"""UniPC: unified predictor-corrector (Zhao et al. 2023), orders 1-3, in EDM's variables."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np

from diffsampler import ODESolver, Run, choice, option

from ._exponential import check_thresholding, model_output, predict_x0_option, thresholding_option
from ._linear import combine
from ._options import integer_in_range
from .dpmpp import step_order

if TYPE_CHECKING:
    from torch import Tensor


@attrs.frozen(kw_only=True)
class UniPCOptions:
    max_order: int = option(3, help="highest order (1..3)", validator=integer_in_range(1, 3))
    variant: str = option(
        "bh2", help="B(h) of the paper: bh1 = h, bh2 = e^h - 1", validator=choice("bh1", "bh2")
    )
    predict_x0: bool = predict_x0_option()
    lower_order_final: bool = option(
        True, help="lower the order on the last steps (order <= steps left), as the seed"
    )
    thresholding: str | None = thresholding_option()

    def __attrs_post_init__(self) -> None:
        check_thresholding(self)


@attrs.frozen
class UniPCStep:
    """``x_pred = a x + sum_j predictor_j m_{i-j}``; ``x_{i+1} = a x + sum_j corrector_j m_{i-j}
    + corrector_new m(x_pred, sigma_{i+1})`` (no corrector on the last step)."""

    a: float
    predictor: tuple[float, ...]
    corrector: tuple[float, ...] | None
    corrector_new: float


def unipc_coefficients(
    sigmas: tuple[float, ...], i: int, order: int, *, predict_x0: bool, variant: str,
    use_corrector: bool,
) -> UniPCStep:
    """UniP-p and UniC-p of Zhao et al. 2023 (Alg. 2-3; ``rho`` from Eq. 8, ``p = 2`` simplified
    to ``rho = 1/2`` as in the official code), expanded into weights on the model outputs."""
    lam = {j: -math.log(sigmas[j]) for j in range(i - order + 1, i + 2)}  # lambda = -log sigma
    t = sigmas[i + 1]
    h = lam[i + 1] - lam[i]
    hh = -h if predict_x0 else h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks = np.array([(lam[i - k] - lam[i]) / h for k in range(1, order)] + [1.0])
    # b_k = hh k! phi_{k+1}(hh) / B(h): h_phi_k = hh phi_{k+1}(hh), phi_{k+1} = (phi_k - 1/k!) / hh
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1.0, 1.0
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    r_matrix = np.stack([rks ** (k - 1) for k in range(1, order + 1)])
    b_vec = np.array(b)

    e = np.eye(order)  # basis: m_i, m_{i-1}, ...
    scale = 1.0 if predict_x0 else t  # x0 form: x_t = (t/s) x - ...; eps form: x - t (...)
    base = -scale * h_phi_1 * e[0]
    differences = [(e[k] - e[0]) / rks[k - 1] for k in range(1, order)]  # D1_k / r_k
    predictor = base
    if order >= 2:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(r_matrix[:-1, :-1], b_vec[:-1])
        predictor = base - scale * b_h * sum(r * d for r, d in zip(rhos_p, differences, strict=True))
    corrector, corrector_new = None, 0.0
    if use_corrector:
        rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(r_matrix, b_vec)
        sum_c = sum((r * d for r, d in zip(rhos_c[:-1], differences, strict=True)), np.zeros(order))
        corrector_vec = base - scale * b_h * (sum_c - rhos_c[-1] * e[0])
        corrector = tuple(float(v) for v in corrector_vec)
        corrector_new = float(-scale * b_h * rhos_c[-1])
    a = t / sigmas[i] if predict_x0 else 1.0
    return UniPCStep(a, tuple(float(v) for v in predictor), corrector, corrector_new)


class UniPC(ODESolver):
    """UniPC: multistep predictor (UniP) plus corrector (UniC) that reuses the next evaluation.

    Zhao et al. 2023, Algorithms 2-3 (B(h) variants bh1/bh2, data or noise prediction), in EDM's
    variables as in the seed. The model is evaluated once at ``sigma_0``; every later evaluation
    is the corrector's, at the predicted point ``(x_pred, sigma_{i+1})``, and is reused as the
    next step's model output, so a run costs ``num_steps - 1`` NFE. No corrector on the last
    step (the seed ran one there when ``num_steps <= max_order``, spending an NFE it did not
    count). Orders follow the seed: warm-up ``i + 1``, then ``max_order`` or, with
    ``lower_order_final``, at most the steps left.
    """

    Options = UniPCOptions
    recommended_schedule: ClassVar[tuple[str, dict[str, Any]]] = ("logsnr", {})  # the seed README pairs UniPC with logSNR
    paper = (
        "Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of "
        "Diffusion Models, arXiv:2302.04867, Algorithms 2-3"
    )

    @property
    def order(self) -> int:
        return int(self.options.max_order)

    def prepare(self, sigmas: tuple[float, ...]) -> list[UniPCStep]:
        o, last = self.options, len(sigmas) - 2
        return [
            unipc_coefficients(
                sigmas, i, step_order(i, len(sigmas), o.max_order, o.lower_order_final),
                predict_x0=o.predict_x0, variant=o.variant, use_corrector=i < last,
            )
            for i in range(len(sigmas) - 1)
        ]

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        c: UniPCStep = run.coefficients[i]
        history: list[Any] = run.history
        if i == 0:
            history.append(model_output(run, x, run.sigmas[0], self.options))  # m_0
        newest_first = list(reversed(history[-len(c.predictor):]))
        # UniP: x_pred = a x_i + sum_j c_j m_{i-j}
        x_pred = combine([(c.a, x), *zip(c.predictor, newest_first, strict=True)])
        if c.corrector is None:
            return x_pred
        m_next = model_output(run, x_pred, run.sigmas[i + 1], self.options)  # reused next step
        history.append(m_next)
        if len(history) > self.options.max_order:
            del history[0]
        # UniC: the same update with m_next in the interpolation, written as a correction of
        # x_pred (x_{i+1} = x_pred + sum_j (corrector_j - predictor_j) m_{i-j} + c_new m_next)
        change = [c - p for c, p in zip(c.corrector, c.predictor, strict=True)]
        return combine([(1.0, x_pred), *zip(change, newest_first, strict=True), (c.corrector_new, m_next)])
