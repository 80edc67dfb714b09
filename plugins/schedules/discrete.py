"""Steps uniform in a discrete-time model's own time variable (LDM / Stable Diffusion)."""

from __future__ import annotations

import attrs
import numpy as np

from diffsampler import (
    Denoiser,
    OptionError,
    SamplingError,
    ScheduleBase,
    TimeMapped,
    option,
    positive,
)


@attrs.frozen(kw_only=True)
class DiscreteOptions:
    rho: float = option(1.0, help="time-step exponent: uniform in t^(1/rho)", validator=positive)


class Discrete(ScheduleBase):
    """``sigma_i = sigma(t_i)``, ``t_i = (t_max^(1/rho) + i/(N-1) (t_min^(1/rho) - t_max^(1/rho)))^rho``.

    ``t_max = t(sigma_max)`` and ``t_min = t(sigma_min)`` through the model's own maps
    (:class:`diffsampler.TimeMapped`: ``sigma_to_t`` / ``t_to_sigma``). For ``rho = 1`` this is
    the seed's ``discrete`` schedule; for other ``rho`` the seed raised only ``t_min`` to
    ``1/rho``, we apply EDM's polynomial rule to both ends.
    """

    Options = DiscreteOptions
    paper = (
        "The seed's `discrete` schedule (LDM / Stable Diffusion time steps) with the polynomial "
        "rule of Karras et al. 2022, Eq. 5, in the model's time"
    )

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        import torch

        if denoiser is None or not isinstance(denoiser, TimeMapped):
            owner = "no model" if denoiser is None else f"the model {type(denoiser).__name__}"
            raise OptionError(
                f"the discrete schedule needs a model with its own time variable "
                f"(sigma_to_t and t_to_sigma); {owner} has none — use polynomial or logsnr"
            )
        ends = torch.tensor([sigma_max, sigma_min], dtype=torch.float64)
        t_max, t_min = (float(v) for v in denoiser.sigma_to_t(ends).double().reshape(-1).cpu())
        if not (np.isfinite(t_max) and np.isfinite(t_min) and t_max >= 0 and t_min >= 0):
            floor = float(denoiser.t_to_sigma(torch.zeros(1, dtype=torch.float64)).double().reshape(-1)[0])
            raise SamplingError(
                f"the model maps sigma_max, sigma_min to times {t_max!r}, {t_min!r}; the discrete "
                f"schedule needs finite, non-negative times (its time 0 is sigma {floor:.4g}: keep "
                "sigma_min at or above it)"
            )
        inv = 1.0 / self.options.rho
        frac = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
        t = (t_max**inv + frac * (t_min**inv - t_max**inv)) ** self.options.rho
        sigmas = denoiser.t_to_sigma(torch.from_numpy(t)).double().reshape(-1).cpu().numpy()
        return np.asarray(sigmas, dtype=np.float64)
