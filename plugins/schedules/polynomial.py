"""EDM's polynomial time schedule (Karras et al. 2022, Eq. 5)."""

from __future__ import annotations

import attrs
import numpy as np

from diffsampler import Denoiser, ScheduleBase, option, positive


@attrs.frozen(kw_only=True)
class PolynomialOptions:
    rho: float = option(7.0, help="time-step exponent; 7 is EDM's choice", validator=positive)


class Polynomial(ScheduleBase):
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""

    Options = PolynomialOptions
    paper = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, Eq. 5"

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        inv = 1.0 / self.options.rho
        frac = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
        return (sigma_max**inv + frac * (sigma_min**inv - sigma_max**inv)) ** self.options.rho
