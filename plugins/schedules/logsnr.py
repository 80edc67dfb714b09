"""Uniform steps in log-SNR, i.e. in log sigma (Lu et al. 2022, DPM-Solver)."""

from __future__ import annotations

import numpy as np

from diffsampler import Denoiser, ScheduleBase


class LogSNR(ScheduleBase):
    """``log sigma_i = log sigma_max + i/(N-1) (log sigma_min - log sigma_max)``.

    In EDM's parameterisation ``lambda = -log sigma`` is half the log signal-to-noise ratio, so
    these steps are uniform in ``lambda``, the time of DPM-Solver's exponential integrators.
    """

    paper = "Lu et al. 2022, DPM-Solver, arXiv:2206.00927, Sec. 3.4 (uniform logSNR)"

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        frac = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
        out = np.exp(np.log(sigma_max) + frac * (np.log(sigma_min) - np.log(sigma_max)))
        out[0], out[-1] = sigma_max, sigma_min
        return out
