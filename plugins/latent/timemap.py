"""The discrete-time VP noise levels of a DDPM-trained model, from its ``alphas_cumprod``.

As the diff-sampler seed's ``CFGPrecond`` (after DPM-Solver, Lu et al. 2022, arXiv:2206.00927,
``NoiseScheduleVP('discrete')``): ``log alpha_k = log(alphas_cumprod[k]) / 2`` on the step grid
``k = 0 .. M-1``, interpolated piecewise-linearly in ``k`` (and extrapolated with the end
segments), and ``sigma(k) = sqrt(exp(-2 log alpha(k)) - 1)``, so at an integer step
``sigma_k = sqrt((1 - alphas_cumprod[k]) / alphas_cumprod[k])``. The network's time input is
``k`` itself (the seed's ``c_noise = M t - 1`` with ``t = (k + 1) / M``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DiscreteVP"]


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear ``f(x)`` through ``(xp, fp)`` (``xp`` increasing), extrapolated linearly."""
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


class DiscreteVP:
    """``sigma <-> k`` maps of a discrete VP model (:class:`~diffsampler.TimeMapped`)."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be a decreasing sequence in (0, 1)")
        self.alphas_cumprod = ac
        self.M = ac.numel()
        self.steps = torch.arange(self.M, dtype=torch.float64)
        self.log_alpha = 0.5 * torch.log(ac)
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _grid(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(steps, log_alpha)`` on ``device``, copied once: the maps then run where their input
        is, with no host-device transfer inside a sampling loop (or a CUDA-graph capture)."""
        if device.type == "cpu":
            return self.steps, self.log_alpha
        if device not in self._on_device:
            self._on_device[device] = (self.steps.to(device), self.log_alpha.to(device))
        return self._on_device[device]

    def forget_devices(self, keep: torch.device) -> None:
        """Drop the grids copied to devices other than ``keep`` (a model moved away from them)."""
        self._on_device = {d: g for d, g in self._on_device.items() if d == keep}

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        steps, log_alpha = self._grid(t.device)
        la = _interp(t.reshape(-1), steps, log_alpha).reshape(t.shape)
        return torch.sqrt(torch.expm1(-2 * la))

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        steps, log_alpha = self._grid(sigma.device)
        la = -0.5 * torch.log1p(sigma.reshape(-1) ** 2)
        t = _interp(la, log_alpha.flip(0), steps.flip(0))
        # sigma_min = sigma(0) maps back to 0 only up to rounding (e.g. -2e-16), which the
        # discrete schedule's t >= 0 check (and rho-th roots) would refuse
        t = torch.where((t < 0) & (t > -1e-9), torch.zeros_like(t), t)
        return t.reshape(sigma.shape)

    @property
    def sigma_min(self) -> float:
        return float(self.t_to_sigma(torch.tensor(0.0)))

    @property
    def sigma_max(self) -> float:
        return float(self.t_to_sigma(torch.tensor(float(self.M - 1))))
