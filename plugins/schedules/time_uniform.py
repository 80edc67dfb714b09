"""Uniform time steps in the VP-SDE time of EDM's VP fit (Lu et al. 2022, DPM-Solver)."""

from __future__ import annotations

import attrs
import numpy as np

from diffsampler import Denoiser, OptionError, ScheduleBase, option, positive

EPSILON_S = 1e-3  # the VP end time that sigma_min is mapped to (EDM, DPM-Solver)


@attrs.frozen
class VPFit:
    """EDM's VP-SDE noise schedule ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``.

    Karras et al. 2022, Table 1 (VP), fitted so that ``sigma(1) = sigma_max`` and
    ``sigma(epsilon_s) = sigma_min``, as in EDM's and the seed's ``time_uniform`` schedule.
    """

    beta_d: float
    beta_min: float

    @classmethod
    def fit(cls, sigma_min: float, sigma_max: float, epsilon_s: float = EPSILON_S) -> VPFit:
        log_min, log_max = np.log1p(sigma_min**2), np.log1p(sigma_max**2)
        beta_d = 2.0 * (log_min / epsilon_s - log_max) / (epsilon_s - 1.0)
        return cls(beta_d=float(beta_d), beta_min=float(log_max - 0.5 * beta_d))

    def is_increasing_on(self, t_low: float, t_high: float) -> bool:
        """Whether ``sigma(t)`` increases on ``[t_low, t_high]`` (the rate ``beta(t) > 0``)."""
        return self.beta_d * t_low + self.beta_min > 0 and self.beta_d * t_high + self.beta_min > 0

    def sigma(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return np.sqrt(np.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def t(self, sigma: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`sigma` (written without cancellation for either sign)."""
        log_alpha = np.log1p(np.asarray(sigma, dtype=np.float64) ** 2)  # beta_d t^2/2 + beta_min t
        root = np.sqrt(self.beta_min**2 + 2.0 * self.beta_d * log_alpha)
        if self.beta_min >= 0:
            return 2.0 * log_alpha / (root + self.beta_min)
        return (root - self.beta_min) / self.beta_d

    def dsigma_dt(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        exponent = 0.5 * self.beta_d * t**2 + self.beta_min * t
        return (self.beta_d * t + self.beta_min) * np.exp(exponent) / (2.0 * self.sigma(t))


@attrs.frozen(kw_only=True)
class TimeUniformOptions:
    rho: float = option(
        1.0,
        help="time-step exponent: uniform in t^(1/rho) (1: uniform in VP time; the seed's "
        "README uses 2 with DEIS)",
        validator=positive,
    )


class TimeUniform(ScheduleBase):
    """``sigma_i = sigma_VP(t_i)``, ``t_i = (1 + i/(N-1) (epsilon_s^(1/rho) - 1))^rho``.

    The VP schedule is fitted to the requested ``sigma_min`` / ``sigma_max`` with
    ``epsilon_s = 1e-3`` (:class:`VPFit`); ``rho = 1`` is DPM-Solver's uniform time steps.
    """

    Options = TimeUniformOptions
    paper = (
        "Lu et al. 2022, DPM-Solver, arXiv:2206.00927, Sec. 3.4 (time uniform); VP schedule "
        "of Karras et al. 2022 (EDM), Table 1"
    )

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        vp = VPFit.fit(sigma_min, sigma_max)
        if not vp.is_increasing_on(EPSILON_S, 1.0):
            raise OptionError(
                f"time_uniform: the VP fit to sigma_min={sigma_min:g}, sigma_max={sigma_max:g} "
                f"(epsilon_s={EPSILON_S:g}) is not monotone; it needs "
                "log(1 + sigma_max^2) well above 1000 log(1 + sigma_min^2) — use a wider "
                "range or the logsnr schedule"
            )
        inv = 1.0 / self.options.rho
        frac = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
        t = (1.0 + frac * (EPSILON_S**inv - 1.0)) ** self.options.rho
        out = vp.sigma(t)
        out[0], out[-1] = sigma_max, sigma_min  # the fit's end points, without rounding
        return out
