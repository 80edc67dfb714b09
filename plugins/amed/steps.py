"""One AMED step for every student, shared by sampling and training.

Zhou et al. CVPR 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps"
(arXiv:2312.00094). Every student step from ``t_cur`` to ``t_next`` spends two evaluations: one
at ``t_cur`` (its bottleneck features feed the predictor; AFS may replace it on the first step,
and the predictor then reads the zero feature) and one at the learned intermediate time
``t_mid = t_next^r t_cur^(1-r)`` (Eq. 8), evaluated at ``scale_time * t_mid``:

* ``amed`` (AMED-Solver, Eq. 9): ``x_mid = x + (t_mid - t) d``,
  ``x_next = x + scale_dir (t_next - t) d(x_mid, t_mid)`` (the mean value theorem direction);
* ``euler``: two Euler steps, ``t -> t_mid -> t_next``, the second scaled by ``scale_dir``;
* ``dpm``: DPM-Solver-2 with the learned ``r``: ``x_next = x + scale_dir (t_next - t)
  ((1 - 1/(2r)) d + 1/(2r) d_mid)``;
* ``ipndm``: two iPNDM (fixed Adams-Bashforth weights) steps sharing one history of ``d``;
* ``dpmpp``: two multistep DPM-Solver++ steps sharing one history, the step count doubled for
  the order rule (``2 num_steps - 1``), the second update scaled by ``scale_dir``.

These follow the seed's ``solvers_amed.py``. The seed's DPM-Solver++ always applies dynamic
thresholding to its data predictions (the AFS one included); ours does with the setting
``thresholding="dynamic"`` and not by default (as our ``dpmpp``'s default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["AB_WEIGHTS", "AMEDStepper", "Evaluator", "StepStats"]

#: Classical Adams-Bashforth weights for equal steps, newest derivative first (iPNDM).
AB_WEIGHTS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class Evaluator(Protocol):
    """How a step reaches the model (a sampling run counts NFE; training keeps gradients)."""

    def first(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor | None]:
        """``(D(x; sigma), features)``; AFS gives ``(x - sigma x / sqrt(1 + sigma^2), None)``."""
        ...

    def mid(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D(x; sigma)`` with one noise level per sample (``sigma`` shaped ``[B]``)."""
        ...


StepStats = tuple[Tensor, Tensor, Tensor]


def _col(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def dpmpp_update(
    x: Tensor, models: Sequence[Tensor], times: Sequence[Tensor], t: Tensor, order: int,
    *, predict_x0: bool, scale: Tensor | float = 1.0,
) -> Tensor:
    """Multistep DPM-Solver++ update of order 1-3 to ``t`` (Lu et al. 2022b, Alg. 2; the
    official third order), times per sample; ``scale`` multiplies the model term (AMED)."""
    lam_t = -torch.log(t)
    lam0 = -torch.log(times[-1])
    h = lam_t - lam0
    m0 = models[-1]
    phi_1 = torch.expm1(-h) if predict_x0 else torch.expm1(h)
    if order == 1:
        term = phi_1 * m0
    elif order == 2:
        r0 = (lam0 + torch.log(times[-2])) / h
        d1 = (m0 - models[-2]) / r0
        term = phi_1 * m0 + 0.5 * phi_1 * d1
    elif order == 3:
        lam1, lam2 = -torch.log(times[-2]), -torch.log(times[-3])
        r0, r1 = (lam0 - lam1) / h, (lam1 - lam2) / h
        d1_0 = (m0 - models[-2]) / r0
        d1_1 = (models[-2] - models[-3]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_2 = phi_1 / h + 1.0 if predict_x0 else phi_1 / h - 1.0
        phi_3 = phi_2 / h - 0.5
        term = phi_1 * m0 - phi_2 * d1 + phi_3 * d2 if predict_x0 else phi_1 * m0 + phi_2 * d1 + phi_3 * d2
    else:
        raise ValueError(f"DPM-Solver++ order must be 1..3, got {order}")
    if predict_x0:
        return (t / times[-1]) * x - scale * term
    return x - scale * t * term


def _order_rule(step: int, total: int, max_order: int, lower_order_final: bool) -> int:
    if not lower_order_final:
        return min(max_order, step)
    return step if step < max_order else min(max_order, total - step)


class AMEDStepper:
    """The state of one student run (its multistep history) and its step rule."""

    def __init__(self, student: str, settings: dict[str, Any], sigmas: Sequence[float]) -> None:
        self.student = student
        self.sigmas = tuple(float(s) for s in sigmas)
        self.max_order = int(settings.get("max_order", 3))
        self.predict_x0 = bool(settings.get("predict_x0", True))
        self.lower_order_final = bool(settings.get("lower_order_final", True))
        self.thresholding = settings.get("thresholding") == "dynamic" and self.predict_x0
        self.models: list[Tensor] = []  # d (ipndm) or model outputs (dpmpp), newest last
        self.times: list[Tensor] = []

    def step(self, x: Tensor, i: int, ev: Evaluator, predictor: Any) -> tuple[Tensor, StepStats]:
        """``x`` at ``sigmas[i]`` to ``sigmas[i + 1]``; returns it and ``(r, scale_dir, scale_time)``."""
        t, tn = self.sigmas[i], self.sigmas[i + 1]
        with torch.no_grad():
            denoised, feats = ev.first(x, t)
        r, sd, st = predictor(feats, t, tn, batch=x.shape[0])
        rc, sdc = _col(r, x), _col(sd, x)
        log_mid = rc * torch.log(torch.as_tensor(tn, dtype=x.dtype)) + (1 - rc) * torch.log(
            torch.as_tensor(t, dtype=x.dtype))
        t_mid = torch.exp(log_mid)  # t_next^r t_cur^(1-r), per sample

        def mid(x_mid: Tensor) -> Tensor:
            return ev.mid(x_mid, (st.to(x.dtype) * t_mid.reshape(-1)))

        d = (x - denoised) / t
        s = self.student
        if s == "amed":
            x_mid = x + (t_mid - t) * d
            d_mid = (x_mid - mid(x_mid)) / t_mid
            out = x + sdc * (tn - t) * d_mid
        elif s == "euler":
            x_mid = x + (t_mid - t) * d
            d_mid = (x_mid - mid(x_mid)) / t_mid
            out = x_mid + sdc * (tn - t_mid) * d_mid
        elif s == "dpm":
            x_mid = x + (t_mid - t) * d
            d_mid = (x_mid - mid(x_mid)) / t_mid
            out = x + sdc * (tn - t) * ((1 / (2 * rc)) * d_mid + (1 - 1 / (2 * rc)) * d)
        elif s == "ipndm":
            out = self._ipndm(x, d, t, tn, t_mid, sdc, mid)
        elif s == "dpmpp":
            out = self._dpmpp(x, denoised, d, t, tn, t_mid, sdc, mid, i)
        else:
            raise ValueError(f"unknown AMED student {s!r}")
        return out, (r, sd, st)

    # -- multistep students ----------------------------------------------------------------
    def _ab(self, d: Tensor) -> Tensor:
        order = min(self.max_order, len(self.models) + 1)
        w = AB_WEIGHTS[order]
        out = w[0] * d
        for k in range(1, order):
            out = out + w[k] * self.models[-k]
        return out

    def _push(self, item: Tensor, keep: int, time: Tensor | None = None) -> None:
        self.models.append(item.detach())
        if time is not None:
            self.times.append(time.detach())
        if keep <= 0:
            self.models.clear()
            self.times.clear()
        else:
            del self.models[:-keep]
            del self.times[:-keep]

    def _ipndm(self, x: Tensor, d: Tensor, t: float, tn: float, t_mid: Tensor, sdc: Tensor,
               mid: Any) -> Tensor:
        keep = self.max_order - 1
        x_mid = x + (t_mid - t) * self._ab(d)
        self._push(d, keep)
        d_mid = (x_mid - mid(x_mid)) / t_mid
        out = x_mid + sdc * (tn - t_mid) * self._ab(d_mid)
        self._push(d_mid, keep)
        return out

    def _data(self, x0: Tensor) -> Tensor:
        """A data prediction as the dpmpp history keeps it (thresholded with ``thresholding``)."""
        if not self.thresholding:
            return x0
        from diffsampler.plugins.solvers._thresholding import dynamic_thresholding

        return dynamic_thresholding(x0)

    def _dpmpp(self, x: Tensor, denoised: Tensor, d: Tensor, t: float, tn: float, t_mid: Tensor,
               sdc: Tensor, mid: Any, i: int) -> Tensor:
        total = 2 * len(self.sigmas) - 1
        step = 2 * i + 1
        self.models.append(self._data(denoised) if self.predict_x0 else d)
        self.times.append(torch.full_like(t_mid, t))
        order = _order_rule(step, total, self.max_order, self.lower_order_final)
        x_mid = dpmpp_update(x, self.models, self.times, t_mid, order, predict_x0=self.predict_x0)
        denoised_mid = mid(x_mid)
        m_mid = self._data(denoised_mid) if self.predict_x0 else (x_mid - denoised_mid) / t_mid
        self.models.append(m_mid)
        self.times.append(t_mid)
        order = _order_rule(step + 1, total, self.max_order, self.lower_order_final)
        tn_t = torch.full_like(t_mid, tn)
        out = dpmpp_update(x_mid, self.models, self.times, tn_t, order,
                           predict_x0=self.predict_x0, scale=sdc)
        self.models[:] = [m.detach() for m in self.models[-3:]]
        self.times[:] = [m.detach() for m in self.times[-3:]]
        return out
