"""EDM's preconditioners: a raw network ``F`` wrapped into a denoiser
``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))``.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), Table 1 (and Eq. 7):

=========  ==========================  ===============================  ======================
precond    c_skip, c_out               c_in                             c_noise
=========  ==========================  ===============================  ======================
VP         1, -sigma                   1 / sqrt(sigma^2 + 1)            (M - 1) sigma^-1(sigma)
VE         1, sigma                    1                                log(sigma / 2)
iDDPM      1, -sigma                   1 / sqrt(sigma^2 + 1)            M - 1 - argmin_j |u_j - sigma|
EDM        s_d^2/(sigma^2+s_d^2),      1 / sqrt(sigma^2 + s_d^2)        log(sigma) / 4
           sigma s_d / sqrt(sigma^2+s_d^2)
=========  ==========================  ===============================  ======================

VP's noise level is ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (Song et al.
2021, Eq. 33 in EDM's variables) with inverse
``sigma^-1(s) = (sqrt(beta_min^2 + 2 beta_d log(1 + s^2)) - beta_min) / beta_d``. iDDPM's
levels ``u_j`` follow Nichol & Dhariwal 2021's cosine schedule,
``alpha_bar(j) = sin(pi/2 j / M / (C_2 + 1))^2`` and
``u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1)``, ``u_M = 0``.

Constructor arguments and recorded attributes equal EDM's (``img_resolution``,
``img_channels``, ``label_dim``, ``use_fp16``, ``model_type`` and the network's keywords), so
the network of an EDM pickle is rebuilt from its recorded ``init_kwargs``. ``use_fp16`` is
kept for compatibility only: diffsampler's ``precision`` model option chooses the arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .dhariwalunet import DhariwalUNet
from .layers import recorded
from .songunet import SongUNet

__all__ = ["ARCHITECTURES", "PRECONDITIONERS", "EDMPrecond", "Precond", "VEPrecond", "VPPrecond", "iDDPMPrecond"]

ARCHITECTURES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def _build_network(model_type: str, **kwargs: Any) -> nn.Module:
    try:
        cls = ARCHITECTURES[model_type]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown model_type {model_type!r}; known: {known}") from None
    return cls(**kwargs)


class Precond(nn.Module):
    """Shared forward pass; subclasses define :meth:`coefficients`."""

    img_resolution: int
    img_channels: int
    label_dim: int
    model: nn.Module

    def _setup(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool,
        model_type: str,
        out_channels: int,
        model_kwargs: dict[str, Any],
    ) -> None:
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model_type = model_type
        self.model = _build_network(
            model_type, img_resolution=img_resolution, in_channels=img_channels,
            out_channels=out_channels, label_dim=label_dim, **model_kwargs,
        )

    # -- what a preconditioner defines ----------------------------------------------------------
    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for ``sigma`` shaped ``[batch, 1, 1, 1]``."""
        raise NotImplementedError

    def round_sigma(self, sigma: Tensor | float) -> Tensor:
        """The noise level the network was trained at nearest to ``sigma`` (identity here)."""
        return torch.as_tensor(sigma)

    @property
    def bottleneck_channels(self) -> int:
        return int(self.model.bottleneck_channels)  # type: ignore[arg-type]

    def forward(
        self,
        x: Tensor,
        sigma: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        *,
        step_condition: Tensor | None = None,
        return_features: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``D(x; sigma)`` in float32 (and the bottleneck features with ``return_features``).

        ``class_labels``: ``[batch, label_dim]`` (one-hot) for conditional networks; ``None``
        gives EDM's all-zero label vector. ``step_condition``: ``[batch]`` numbers of sampling
        steps for an SFD-v network (built with ``step_condition=True``).
        """
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        labels = None
        if self.label_dim:
            labels = (
                torch.zeros([1, self.label_dim], device=x.device)
                if class_labels is None
                else class_labels.to(torch.float32).reshape(-1, self.label_dim)
            )
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        extra = {} if step_condition is None else {"step_condition": step_condition.to(torch.float32).reshape(-1)}
        result = self.model(
            c_in * x, c_noise.flatten(), labels, augment_labels, return_features=return_features, **extra
        )
        raw, features = result if isinstance(result, tuple) else (result, None)
        denoised = c_skip * x + c_out * raw[:, : self.img_channels].to(torch.float32)
        return (denoised, features) if features is not None else denoised


@recorded
class VPPrecond(Precond):
    """Variance-preserving preconditioning (Song et al. 2021 "VP"; EDM Table 1)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)

    def sigma(self, t: Tensor | float) -> Tensor:
        """``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""
        t = torch.as_tensor(t)
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_inv(self, sigma: Tensor | float) -> Tensor:
        """``t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        return 1.0, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


@recorded
class VEPrecond(Precond):
    """Variance-exploding preconditioning (Song et al. 2021 "VE"; EDM Table 1)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        return 1.0, sigma, 1.0, (0.5 * sigma).log()


@recorded
class iDDPMPrecond(Precond):
    """Improved-DDPM preconditioning (Nichol & Dhariwal 2021; EDM Table 1), discrete levels ``u``.

    The network predicts ``2 * img_channels`` channels (mean and variance); the first
    ``img_channels`` are the noise estimate.
    """

    u: Tensor

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, 2 * img_channels, model_kwargs)
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)

    @property
    def sigma_min(self) -> float:
        return float(self.u[self.M - 1])

    @property
    def sigma_max(self) -> float:
        return float(self.u[0])

    def alpha_bar(self, j: Tensor | int) -> Tensor:
        """``alpha_bar(j) = sin(pi/2 * j / M / (C_2 + 1))^2`` (cosine schedule)."""
        j = torch.as_tensor(j)
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: Tensor | float, return_index: bool = False) -> Tensor:
        """The nearest level ``u_j`` (or its index ``j``) to each ``sigma``."""
        sigma = torch.as_tensor(sigma)
        u = self.u.to(torch.float32)
        flat = sigma.to(device=u.device, dtype=torch.float32).reshape(-1, 1)
        index = (flat - u.reshape(1, -1)).abs().argmin(dim=1)
        result = index if return_index else u[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1.0, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


@recorded
class EDMPrecond(Precond):
    """EDM's own preconditioning (Karras et al. 2022, Sec. 5 and Table 1), ``sigma_data=0.5``."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


PRECONDITIONERS: dict[str, type[Precond]] = {
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "iDDPMPrecond": iDDPMPrecond,
    "EDMPrecond": EDMPrecond,
}
