"""ADM-family networks as diffsampler Denoisers (``D(x; sigma)``, ``x = x0 + sigma * eps``).

Two preconditionings, as the diff-sampler seed's ``CGPrecond`` and ``CMPrecond`` use them:

* ``vp`` (ADM, epsilon prediction; Song et al. 2021, arXiv:2011.13456, VP SDE; Karras et al.
  2022, arXiv:2206.00364, Table 1): ``x_t = x / sqrt(1 + sigma^2)``, network time
  ``(M - 1) * t(sigma)`` with ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``,
  ``beta_d = 19.9``, ``beta_min = 0.1``, ``M = 1000``; the learned-variance half of the output is
  dropped, and ``D = x - sigma * eps``.
* ``edm`` (Consistency Models' EDM network): ``c_skip = s_d^2 / (sigma^2 + s_d^2)``,
  ``c_out = sigma s_d / sqrt(sigma^2 + s_d^2)``, ``c_in = 1 / sqrt(sigma^2 + s_d^2)``, network
  time ``250 log(sigma)`` (Karras et al. 2022, Eq. 7 and Table 1; ``s_d = 0.5``).

Classifier guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, Algorithm 2 / Eq. 14):
``eps_hat = eps - s * sqrt(1 - alpha_bar) * grad_{x_t} log p(y | x_t)`` with
``alpha_bar = 1 / (1 + sigma^2)``, so ``D = x - sigma * eps_hat``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffsampler import DenoiserBase
from diffsampler.errors import OptionError, SamplingError
from diffsampler.graphs import PerBatch, capturing

__all__ = ["ADMDenoiser", "CMDenoiser", "VPParams", "make_denoiser"]

_AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class VPParams:
    """The seed's continuous VP noise schedule: ``sigma(t)`` and its inverse."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-3):
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t

    def sigma(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.sqrt(torch.exp(0.5 * self.beta_d * t**2 + self.beta_min * t) - 1)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)) - self.beta_min) / self.beta_d


class _ADMBase(DenoiserBase):
    """An ADM U-Net (``vp``) or a Consistency-Models EDM U-Net (``edm``) as a Denoiser, with
    optional classifier guidance (``vp`` only). ``cond``: class indices (an int, a sequence or an
    integer tensor of ``batch`` indices); ``None`` uses ``class_label``.
    """

    paper = "Dhariwal & Nichol 2021, Diffusion Models Beat GANs on Image Synthesis, arXiv:2105.05233"

    def __init__(
        self,
        unet: nn.Module,
        *,
        precond: str = "vp",
        classifier: nn.Module | None = None,
        guidance_rate: float = 0.0,
        class_label: int | None = None,
        clip: bool = True,
        precision: str = "fp32",
        channels_last: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sigma_data: float = 0.5,
        vp: VPParams | None = None,
        device: str | torch.device | None = None,
        name: str = "adm",
        info: dict[str, Any] | None = None,
    ) -> None:
        if precond not in ("vp", "edm"):
            raise OptionError(f"precond must be 'vp' or 'edm', got {precond!r}")
        if precision not in _AUTOCAST:
            raise OptionError(f"precision must be one of {', '.join(_AUTOCAST)}, got {precision!r}")
        if classifier is not None and precond != "vp":
            raise OptionError("classifier guidance is implemented for VP (ADM) networks only")
        self.unet = unet.eval().requires_grad_(False)
        self.classifier = None if classifier is None else classifier.eval().requires_grad_(False)
        self.precond = precond
        self.vp = vp or VPParams()
        self.sigma_data = float(sigma_data)
        self.guidance_rate = float(guidance_rate)
        self.clip = bool(clip)
        self.precision = precision
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.name = name
        self._unet_classes = int(getattr(unet, "num_classes", None) or 0)
        self._per_batch = PerBatch()  # a batch's labels, checked once, reused at every step
        self.label_dim = max(self._unet_classes, self._classifier_classes)
        if class_label is not None and not 0 <= class_label < self.label_dim:
            raise OptionError(f"class_label {class_label} is out of range for model {name!r}")
        self.class_label = class_label
        default_min, default_max = (
            (float(self.vp.sigma(self.vp.epsilon_t)), float(self.vp.sigma(1.0))) if precond == "vp" else (0.002, 80.0)
        )
        size = int(getattr(unet, "image_size"))  # noqa: B009
        self._init_denoiser(
            (int(getattr(unet, "in_channels")), size, size),  # noqa: B009
            sigma_min if sigma_min is not None else default_min,
            sigma_max if sigma_max is not None else default_max,
        )
        self.info = dict(info or {})
        self.info.setdefault("precond", precond)
        self.info.setdefault("nfe_per_evaluation", 1)
        guided = self.classifier is not None and self.guidance_rate != 0
        self.info.setdefault("guidance", {"type": "classifier", "rate": self.guidance_rate} if guided else None)
        if device is not None:
            self.to(device)

    def check_labels(self, choice: str | None) -> None:
        """Refuse, before sampling, a run without class labels (``--labels``) that needs them;
        ``choice`` is the ``--labels`` value (a class index out of range is the caller's check)."""
        if choice is not None or self.class_label is not None:
            return
        if self._unet_classes or (self.classifier is not None and self.guidance_rate != 0):
            why = "is class-conditional" if self._unet_classes else "guides with a classifier"
            raise OptionError(
                f"model {self.name!r} {why}: choose classes with --labels random|seed|K "
                "or the model option class_label"
            )

    @property
    def _classifier_classes(self) -> int:
        return int(getattr(self.classifier, "num_classes", 0) or 0)

    # -- Denoiser ------------------------------------------------------------------------------
    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        device = x.device
        if next(self.unet.parameters()).device != device:
            self.to(device)
        batch = x.shape[0]
        labels = self._per_batch.value(cond, lambda: self._labels(cond, batch, device), batch, device)
        s = torch.as_tensor(sigma, device=device, dtype=torch.float32).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        xf = x.to(torch.float32)
        sb = s.reshape(-1, *([1] * (x.dim() - 1)))
        if self.precond == "edm":
            sd2 = self.sigma_data**2
            c_in = 1 / torch.sqrt(sb**2 + sd2)
            out = self._net(c_in * xf, self._net_time(s.double()).float(), labels)
            denoised = sd2 / (sb**2 + sd2) * xf + sb * self.sigma_data / torch.sqrt(sb**2 + sd2) * out
            return denoised.to(x.dtype)
        c_in = 1 / torch.sqrt(sb**2 + 1)
        t = self._net_time(s.double()).float()
        eps = self._net(c_in * xf, t, labels)[:, : x.shape[1]]
        if self.classifier is not None and self.guidance_rate != 0:
            if labels is None:
                raise SamplingError(
                    f"classifier guidance on {self.name!r} needs class labels: pass cond, "
                    "--labels random|K, or the model option class_label"
                )
            grad = self.classifier_grad(c_in * xf, t, labels)
            # sqrt(1 - alpha_bar) = sigma / sqrt(1 + sigma^2), without cancellation at small sigma
            eps = eps - sb * c_in * self.guidance_rate * grad
        denoised = xf - sb * eps
        if self.clip:
            denoised = denoised.clamp(-1, 1)
        return denoised.to(x.dtype)

    def classifier_grad(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """``grad_{x_t} log p(y | x_t)`` from the classifier (unscaled)."""
        assert self.classifier is not None
        with torch.enable_grad():
            inp = x_t.detach().requires_grad_(True)
            with self._autocast(inp.device):
                logits = self.classifier(inp, t)
            logp = torch.log_softmax(logits.float(), dim=-1)
            picked = logp[torch.arange(len(logp), device=logp.device), labels].sum()
            (grad,) = torch.autograd.grad(picked, inp)
        return grad.detach()

    def _net_time(self, sigma: Tensor) -> Tensor:
        """The network's time input for ``sigma``: ``(M - 1) t(sigma)`` (VP) or ``250 log sigma``."""
        if self.precond == "edm":
            return 250.0 * torch.log(sigma)
        return (self.vp.M - 1) * self.vp.sigma_inv(sigma)

    # -- mechanics ------------------------------------------------------------------------------
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        dtype = _AUTOCAST[self.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def _net(self, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        y = labels if self._unet_classes else None
        if self._unet_classes and y is None:
            raise SamplingError(
                f"model {self.name!r} is class-conditional: pass cond, --labels random|K, "
                "or the model option class_label"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(x.device):
            out = self.unet(x, t, y)
        return out.float()

    def compiled(self, mode: str = "default") -> _ADMBase:
        """A copy whose U-Net runs through ``torch.compile`` with static shapes
        (:class:`~diffsampler.Compilable`; the mode and shape choices as for EDM's networks, in
        docs/performance.md). The classifier, differentiated for guidance, stays eager."""
        twin = copy.copy(self)
        twin.unet = torch.compile(self.unet, mode=mode, dynamic=False)  # type: ignore[assignment]
        return twin

    def _labels(self, cond: Any, batch: int, device: torch.device) -> Tensor | None:
        classes = self.label_dim
        if cond is None:
            if self.class_label is None:
                return None
            cond = self.class_label
        if not classes:
            raise SamplingError(f"model {self.name!r} is unconditional; got cond={cond!r:.60}")
        if isinstance(cond, bool) or not isinstance(cond, int | Sequence | Tensor):
            raise SamplingError(f"cond must be class indices for model {self.name!r}, got {cond!r:.60}")
        index = torch.as_tensor(cond, device=device)
        if index.is_floating_point() or index.dtype == torch.bool or index.dim() > 1:
            raise SamplingError(f"class indices must be integers, got {cond!r:.60}")
        index = index.reshape(-1).long()
        if index.numel() == 1:
            index = index.expand(batch)
        if index.numel() != batch:
            raise SamplingError(f"got {index.numel()} class labels for a batch of {batch}")
        if not capturing() and bool(((index < 0) | (index >= classes)).any()):
            raise SamplingError(f"class labels must be in 0..{classes - 1}, got {cond!r:.60}")
        return index

    def to(self, device: str | torch.device) -> _ADMBase:
        self.unet = self.unet.to(device)
        if self.classifier is not None:
            self.classifier = self.classifier.to(device)
        return self

    def __repr__(self) -> str:
        guide = f", classifier guidance {self.guidance_rate}" if self.classifier is not None else ""
        return f"{type(self).__name__}({self.name!r}, {self.precond}, shape={self.shape}, classes={self.label_dim}{guide})"




class ADMDenoiser(_ADMBase):
    """ADM (VP) as a Denoiser; :class:`~diffsampler.TimeMapped` in the network's own time
    ``(M - 1) t(sigma)`` (0 .. 999), so the ``discrete`` schedule works."""

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return (self.vp.M - 1) * self.vp.sigma_inv(torch.as_tensor(sigma, dtype=torch.float64))

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return self.vp.sigma(torch.as_tensor(t, dtype=torch.float64) / (self.vp.M - 1))


class CMDenoiser(_ADMBase):
    """Consistency Models' EDM-preconditioned U-Net as a Denoiser (no time map of its own)."""

    paper = "Song et al. 2023, Consistency Models, arXiv:2303.01469"


def make_denoiser(unet: nn.Module, *, precond: str, **kwargs: Any) -> _ADMBase:
    """The wrapper for ``precond`` (``vp``: ADM, ``edm``: Consistency Models)."""
    cls = ADMDenoiser if precond == "vp" else CMDenoiser
    return cls(unet, precond=precond, **kwargs)
