"""DPM-Solver-2 (singlestep, second order) in EDM's form (Lu et al. 2022)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import attrs

from diffsampler import ODESolver, OptionError, Run, option

if TYPE_CHECKING:
    from torch import Tensor


def _unit_interval(_instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise OptionError(f"option {attribute.name} must be in (0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class DPMOptions:
    r: float = option(
        0.5,
        help="position of the intermediate point, sigma_mid = sigma_next^r sigma^(1-r); "
        "0.5 is DPM-Solver-2",
        validator=_unit_interval,
    )


@attrs.frozen
class _Step:
    """Weights on the residuals ``r = x - D = sigma d`` (the division by sigma folded in)."""

    sigma_mid: float
    to_mid: float  # (sigma_mid - sigma_i) / sigma_i, on r_i
    weight_start: float  # h (1 - 1/(2r)) / sigma_i, on r_i
    weight_mid: float  # h / (2r) / sigma_mid, on r_mid


class DPM2(ODESolver):
    """DPM-Solver-2: a midpoint step at ``sigma_mid = sigma_{i+1}^r sigma_i^(1-r)``.

    Lu et al. 2022, Algorithm 1 (DPM-Solver-2), written as in the seed on EDM's ``d``:
    ``x_mid = x_i + (sigma_mid - sigma_i) d_i``,
    ``x_{i+1} = x_i + h ((1 - 1/(2r)) d_i + 1/(2r) d(x_mid, sigma_mid))``. Order 2, two NFE
    per step; ``r = 0.5`` puts the midpoint at the geometric mean (uniform in log sigma).
    """

    Options = DPMOptions
    paper = (
        "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model "
        "Sampling in Around 10 Steps, arXiv:2206.00927, Algorithm 1 (DPM-Solver-2)"
    )
    order = 2
    evals_per_step = 2

    def prepare(self, sigmas: tuple[float, ...]) -> list[_Step]:
        r = float(self.options.r)
        out = []
        for sigma, sigma_next in itertools.pairwise(sigmas):
            sigma_mid = sigma_next**r * sigma ** (1.0 - r)
            h = sigma_next - sigma
            out.append(_Step(
                sigma_mid, (sigma_mid - sigma) / sigma, h * (1.0 - 0.5 / r) / sigma,
                h * 0.5 / r / sigma_mid,
            ))
        return out

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        c: _Step = run.coefficients[i]
        # d_i = (x_i - D(x_i; sigma_i)) / sigma_i, kept as the residual r_i = sigma_i d_i
        r = x - run.denoise(x, run.sigmas[i])
        x_mid = x.add(r, alpha=c.to_mid)  # Euler step to sigma_mid
        r_mid = x_mid - run.denoise(x_mid, c.sigma_mid)  # sigma_mid d_mid
        # x_{i+1} = x_i + h ((1 - 1/(2r)) d_i + 1/(2r) d_mid); the first weight is 0 for r = 1/2
        out = x.add(r_mid, alpha=c.weight_mid)
        return out.add_(r, alpha=c.weight_start) if c.weight_start != 0.0 else out
