"""Latent diffusion models (LDM, Stable Diffusion) as diffsampler Denoisers.

The network predicts eps on latents ``z_k = alpha_k z0 + sigma_k alpha_k eps``; in EDM's VE form
(``x = z / alpha``, Karras et al. 2022, arXiv:2206.00364, Table 1, as the seed's ``CFGPrecond``)
``D(x; sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), k(sigma))`` with the step ``k(sigma)`` of
:class:`.timemap.DiscreteVP`. Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598):
``eps = eps_u + w (eps_c - eps_u)`` from one network call on the doubled batch, which the seed
counts as 2 NFE per evaluation (``info["nfe_per_evaluation"]``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffsampler.denoiser import DenoiserBase
from diffsampler.errors import OptionError, SamplingError
from diffsampler.graphs import PerBatch, capturing, in_graph_run

from .timemap import DiscreteVP

__all__ = ["LatentDenoiser", "cfg_combine"]

_AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
_ENCODE_CHUNK = 64  # prompts per text-encoder call
_KEPT_PROMPTS = 64  # distinct (prompt, device) embeddings kept between calls


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, rate: float) -> Tensor:
    """Classifier-free guidance: ``eps_u + w (eps_c - eps_u)``."""
    return eps_uncond + rate * (eps_cond - eps_uncond)


def _warn_outside_steps(time: DiscreteVP, sigma_min: float | None, sigma_max: float | None) -> None:
    """A noise range past the training steps ``0 .. M-1`` runs the network at extrapolated times
    (as the seed's ``interpolate_fn`` does, so it is allowed): say so, both ends alike."""
    if sigma_max is not None and sigma_max > time.sigma_max * (1 + 1e-9):
        warnings.warn(f"sigma_max {sigma_max:g} is above the network's last step ({time.sigma_max:.4g}): "
                      f"its time input is extrapolated past step {time.M - 1}", stacklevel=3)
    if sigma_min is not None and sigma_min < time.sigma_min * (1 - 1e-9):
        warnings.warn(f"sigma_min {sigma_min:g} is below the network's step 0 ({time.sigma_min:.4g}): its time "
                      "input is extrapolated below 0 (the discrete schedule refuses it)", stacklevel=3)


class LatentDenoiser(DenoiserBase):
    """A latent eps-prediction U-Net with its decoder (:class:`~diffsampler.Decodable`),
    discrete time maps (:class:`~diffsampler.TimeMapped`) and, for text models, CFG.

    ``unet(z, k, context)`` returns eps; ``decoder(z)`` returns images in [-1, 1];
    ``encode_text(list_of_prompts)`` returns the context embeddings (text models).
    ``cond``: ``None`` (the ``prompt`` for every sample), prompt indices into ``prompts``
    (ints, as ``--labels`` passes them), or a list of strings.
    """

    paper = "Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models, arXiv:2112.10752"

    def __init__(
        self,
        *,
        unet: Callable[[Tensor, Tensor, Tensor | None], Tensor],
        modules: dict[str, torch.nn.Module],
        decoder: Callable[[Tensor], Tensor],
        shape: tuple[int, ...],
        alphas_cumprod: Tensor,
        encode_text: Callable[[list[str]], Tensor] | None = None,
        prompts: Sequence[str] = (),
        negative_prompt: str = "",
        guidance_rate: float = 1.0,
        precision: str = "fp32",
        channels_last: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        name: str = "latent",
        info: dict[str, Any] | None = None,
    ) -> None:
        if precision not in _AUTOCAST:
            raise OptionError(f"precision must be one of {', '.join(_AUTOCAST)}, got {precision!r}")
        self._unet, self._decoder, self.modules = unet, decoder, modules
        self.time = DiscreteVP(alphas_cumprod)
        self.encode_text = encode_text
        self.prompts = list(prompts)
        if encode_text is None and self.prompts:
            raise OptionError(f"model {name!r} is unconditional: it takes no prompt")
        self.negative_prompt = negative_prompt
        self.guidance_rate = float(guidance_rate)
        self.precision = precision
        self.channels_last = bool(channels_last)
        if self.channels_last:
            modules["unet"].to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # in place
        self.name = name
        _warn_outside_steps(self.time, sigma_min, sigma_max)
        self._init_denoiser(
            shape,
            self.time.sigma_min if sigma_min is None else sigma_min,
            self.time.sigma_max if sigma_max is None else sigma_max,
        )
        self.info = dict(info or {})
        self.info["nfe_per_evaluation"] = 2 if self.guided else 1
        self.info["guidance"] = None
        if self.guided:
            self.info["guidance"] = {"type": "classifier-free", "rate": self.guidance_rate,
                                     "negative_prompt": negative_prompt}
        self._cache: dict[tuple[str, torch.device], Tensor] = {}
        self._tables: dict[torch.device, Tensor] = {}
        self._per_batch = PerBatch()  # a batch's context, reused at every step

    @property
    def guided(self) -> bool:
        """Whether an evaluation runs the network on a doubled (unconditional + conditional) batch."""
        return self.encode_text is not None and self.guidance_rate != 1.0

    @property
    def label_dim(self) -> int:
        """Prompts to choose from by index (``--labels``); 0 with a single prompt or none."""
        return len(self.prompts) if len(self.prompts) > 1 else 0

    def check_labels(self, choice: str | None) -> None:
        """Refuse, before sampling, a ``--labels`` choice (``None``, ``random``, ``seed`` or an
        index) that cannot pick this model's prompts, in the words of prompts."""
        if self.encode_text is None:
            return  # unconditional: labels are refused as for any unconditional model
        source = self.info.get("prompts_file")
        where = f"prompts_file {source}" if source else "the model"
        count = len(self.prompts)
        if count == 0:
            raise OptionError(self._no_prompt())
        if choice is None:
            if count > 1:
                raise OptionError(f"{where} holds {count} prompts: choose one per sample with "
                                  "--labels seed|random|K")
            return
        if count == 1:
            raise OptionError(f"--labels {choice} picks prompts from a prompts_file of several lines; "
                              f"{where} has one prompt: drop --labels")
        if choice.isdigit() and int(choice) >= count:
            raise OptionError(f"prompt {choice} is out of range: {where} holds {count} prompts (0..{count - 1})")

    def _no_prompt(self) -> str:
        return (f"model {self.name!r} needs a prompt: the model option prompt=..., or prompts_file=... "
                "with --labels seed|random|K")

    # -- Denoiser / TimeMapped / Decodable -----------------------------------------------------
    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return self.time.sigma_to_t(sigma)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return self.time.t_to_sigma(t)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        self._follow(x.device)
        batch = x.shape[0]
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float64).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch)
        k = self.time.sigma_to_t(s).to(torch.float32)  # on x's device: no host sync per step
        sb = s.to(torch.float32).reshape(-1, *([1] * (x.dim() - 1)))
        xf = x.to(torch.float32)
        z = xf / torch.sqrt(1 + sb**2)
        if self.encode_text is None:
            if cond is not None:
                raise SamplingError(f"model {self.name!r} is unconditional; got cond={cond!r:.60}")
            eps = self._eval(z, k, None)
        else:
            context = self._context(cond, batch, x.device)
            if self.guided:
                uncond = self._embed([self.negative_prompt], x.device, keep=True).expand_as(context)
                out = self._eval(torch.cat([z, z]), torch.cat([k, k]), torch.cat([uncond, context]))
                eps_u, eps_c = out.chunk(2)
                eps = cfg_combine(eps_u, eps_c, self.guidance_rate)
            else:
                eps = self._eval(z, k, context)
        return (xf - sb * eps).to(x.dtype)

    def decode(self, latent: Tensor) -> Tensor:
        """Images in [-1, 1] from sampled latents (the VAE / VQ decoder)."""
        self._follow(latent.device)
        with torch.no_grad(), self._autocast(latent.device):
            images = self._decoder(latent.to(torch.float32))
        return images.float().clamp(-1, 1)

    # -- mechanics ------------------------------------------------------------------------------
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        dtype = _AUTOCAST[self.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def _eval(self, z: Tensor, k: Tensor, context: Tensor | None) -> Tensor:
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        with self._autocast(z.device):
            return self._unet(z, k, context).float()

    def compiled(self, mode: str = "default") -> LatentDenoiser:
        """A copy whose U-Net runs through ``torch.compile`` with static shapes
        (:class:`~diffsampler.Compilable`; the choices as for EDM's networks, docs/performance.md).
        The autoencoder and the text encoder, run once per batch or prompt, stay eager."""
        twin = copy.copy(self)
        twin._unet = torch.compile(self._unet, mode=mode, dynamic=False)
        return twin

    def _embed(self, prompts: list[str], device: torch.device, *, keep: bool = False) -> Tensor:
        """Text embeddings ``[len(prompts), tokens, width]`` on ``device``, encoded in chunks; the
        first :data:`_KEPT_PROMPTS` distinct prompts stay cached on the device (the negative
        prompt, a model's own prompts), others are encoded when a batch needs them; ``keep``:
        cache these whatever the count (the negative prompt, used at every step)."""
        assert self.encode_text is not None
        fresh: dict[str, Tensor] = {}
        missing = [p for p in dict.fromkeys(prompts) if (p, device) not in self._cache]
        with torch.no_grad():
            for start in range(0, len(missing), _ENCODE_CHUNK):
                chunk = missing[start : start + _ENCODE_CHUNK]
                for p, e in zip(chunk, self.encode_text(chunk), strict=True):
                    fresh[p] = e.float().to(device)
                    if keep or len(self._cache) < _KEPT_PROMPTS:
                        self._cache[(p, device)] = fresh[p]
        return torch.stack([self._cache.get((p, device), fresh.get(p)) for p in prompts])  # type: ignore[misc]

    def _prompt_table(self, device: torch.device) -> Tensor:
        """Every prompt's embedding ``[prompts, tokens, width]`` on ``device``, made once: what a
        CUDA graph gathers from by prompt index (its memory grows with the prompts file)."""
        if device not in self._tables:
            self._tables[device] = self._embed(self.prompts, device)
        return self._tables[device]

    def _context(self, cond: Any, batch: int, device: torch.device) -> Tensor:
        """The text embeddings of a batch's prompts. Prompt indices as a tensor are read on the host
        once per batch (the same tensor at every step reuses the context), except in a CUDA graph's
        warm-up and capture, where they are gathered on the device from :meth:`_prompt_table`."""
        if isinstance(cond, Tensor) and in_graph_run():
            return self._gathered(cond, batch, device)
        return self._per_batch.value(cond, lambda: self._embed(self._prompts_of(cond, batch), device), batch, device)

    def _prompts_of(self, cond: Any, batch: int) -> list[str]:
        if cond is None:
            if len(self.prompts) > 1:
                raise SamplingError(f"model {self.name!r} holds {len(self.prompts)} prompts: choose one "
                                    "per sample (cond, or --labels seed|random|K)")
            if not self.prompts:
                raise SamplingError(self._no_prompt())
            prompts = self.prompts * batch
        elif isinstance(cond, str):
            prompts = [cond] * batch
        elif isinstance(cond, Sequence) and cond and all(isinstance(c, str) for c in cond):
            prompts = list(cond)
        else:
            index = self._indices(cond).tolist()
            if any(not 0 <= i < len(self.prompts) for i in index):
                raise SamplingError(f"prompt indices must be in 0..{len(self.prompts) - 1}, got {cond!r:.60}")
            prompts = [self.prompts[i] for i in index]
            if len(prompts) == 1:
                prompts = prompts * batch
        if len(prompts) != batch:
            raise SamplingError(f"got {len(prompts)} prompts for a batch of {batch}")
        return prompts

    def _indices(self, cond: Any, device: torch.device | None = None) -> Tensor:
        """Prompt indices as a long tensor; floats and booleans are refused (as class labels are)."""
        if not self.prompts:
            raise SamplingError(self._no_prompt())
        if isinstance(cond, bool) or not isinstance(cond, int | Sequence | Tensor):
            raise SamplingError(f"cond must be prompts or prompt indices for model {self.name!r}, got {cond!r:.60}")
        index = torch.as_tensor(cond, device=device)
        if index.is_floating_point() or index.dtype == torch.bool or index.dim() > 1:
            raise SamplingError(f"prompt indices must be integers, got {cond!r:.60}")
        return index.reshape(-1).long()

    def _gathered(self, cond: Tensor, batch: int, device: torch.device) -> Tensor:
        index = self._indices(cond, device)
        if not capturing() and bool(((index < 0) | (index >= len(self.prompts))).any()):
            raise SamplingError(f"prompt indices must be in 0..{len(self.prompts) - 1}, got {cond!r:.60}")
        if index.numel() == 1:
            index = index.expand(batch)
        if index.numel() != batch:
            raise SamplingError(f"got {index.numel()} prompts for a batch of {batch}")
        return self._prompt_table(device)[index]

    def _follow(self, device: torch.device) -> None:
        for key, module in self.modules.items():
            if next(module.parameters()).device != device:
                self.modules[key] = module.to(device)

    def to(self, device: str | torch.device) -> LatentDenoiser:
        """Move the networks; embeddings and tables kept for another device are dropped."""
        target = torch.device(device)
        self._follow(target)
        self._cache = {key: e for key, e in self._cache.items() if key[1] == target}
        self._tables = {d: t for d, t in self._tables.items() if d == target}
        self._per_batch.clear()
        self.time.forget_devices(keep=target)
        return self

    def __repr__(self) -> str:
        cfg = f", CFG {self.guidance_rate}" if self.encode_text is not None else ""
        return f"LatentDenoiser({self.name!r}, latent shape={self.shape}{cfg})"
