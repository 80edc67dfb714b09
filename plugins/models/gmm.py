"""An analytic Gaussian-mixture model whose denoiser is exact (the embedded default model).

Data: ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)``. Under ``x = x0 + sigma * eps`` the noisy marginal is
``sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)`` and the posterior mean is closed-form::

    D(x; sigma) = sum_k gamma_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)]

with responsibilities ``gamma_k`` of the noisy marginal. Every solver can therefore be measured
against the exact probability-flow ODE of a known distribution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler import in_range, option, positive
from diffsampler.denoiser import DenoiserBase
from diffsampler.errors import ModelLoadError, OptionError

SPEC_KIND = "gmm"

if TYPE_CHECKING:
    import torch


def _shape(value: Any) -> tuple[int, ...]:
    out = tuple(int(v) for v in value)
    if not out or any(v < 1 for v in out):
        raise ValueError(f"shape must be positive integers, got {value!r}")
    return out


@attrs.frozen(kw_only=True)
class GMMOptions:
    shape: tuple[int, ...] = option((3, 32, 32), help="shape of one sample", converter=_shape)
    components: int = option(8, help="number of mixture components", validator=in_range(1, 4096))
    spread: float = option(
        0.1, help="largest per-component standard deviation (each is in [spread/2, spread])",
        validator=positive,
    )
    seed: int = option(0, help="seed of the fixed construction", validator=in_range(0, 2**32 - 1))
    sigma_min: float = option(0.002, help="lowest noise level of the model", validator=positive)
    sigma_max: float = option(80.0, help="highest noise level of the model", validator=positive)
    path: str | None = option(
        None, help="a spec file saved by GaussianMixture.save_spec (overrides the other options)"
    )


def _interpolation_matrix(n: int, coarse: int) -> np.ndarray:
    """Linear-interpolation weights from ``coarse`` grid points to ``n`` points, ``[n, coarse]``."""
    pos = np.linspace(0.0, coarse - 1.0, n)
    return np.stack([np.interp(pos, np.arange(coarse), np.eye(coarse)[j]) for j in range(coarse)], 1)


def _smooth_means(rng: np.random.Generator, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """Image-like means: coarse 4x4 random colour fields, bilinearly upsampled, in [-0.6, 0.6]."""
    if len(shape) == 3 and shape[1] >= 4 and shape[2] >= 4:
        _, h, w = shape
        coarse = rng.uniform(-0.6, 0.6, size=(k, shape[0], 4, 4))
        return _interpolation_matrix(h, 4) @ coarse @ _interpolation_matrix(w, 4).T
    return rng.uniform(-0.6, 0.6, size=(k, *shape))


class GaussianMixture(DenoiserBase):
    """Isotropic Gaussian mixture with an exact denoiser. Build with :func:`gmm`."""

    paper = (
        "Exact posterior mean of a Gaussian mixture; the analytic testbed of Chen et al. 2023, "
        "A Geometric Perspective on Diffusion Models, arXiv:2305.19947"
    )

    def __init__(
        self,
        means: np.ndarray,
        stds: np.ndarray,
        weights: np.ndarray,
        *,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        spec: dict[str, Any] | None = None,
    ) -> None:
        means = np.asarray(means, dtype=np.float64)
        self._init_denoiser(means.shape[1:], sigma_min, sigma_max)
        self.means = means.reshape(means.shape[0], -1)
        self.stds = np.asarray(stds, dtype=np.float64).reshape(-1)
        self.weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        k = self.means.shape[0]
        if self.stds.shape != (k,) or self.weights.shape != (k,):
            raise ValueError("means, stds and weights must describe the same number of components")
        if not np.isclose(self.weights.sum(), 1.0) or (self.weights < 0).any():
            raise ValueError("weights must be non-negative and sum to 1")
        self.spec = dict(spec or {})
        self._cache: dict[tuple[Any, Any], tuple[torch.Tensor, ...]] = {}

    # -- Denoiser protocol -------------------------------------------------------------------
    def _params(self, dtype: Any, device: Any) -> tuple[torch.Tensor, ...]:
        import torch

        key = (dtype, device)
        if key not in self._cache:
            self._cache[key] = (
                torch.as_tensor(self.means, dtype=dtype, device=device),
                torch.as_tensor(self.stds**2, dtype=dtype, device=device),
                torch.as_tensor(np.log(self.weights), dtype=dtype, device=device),
            )
        return self._cache[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        import torch

        mu, var0, logw = self._params(x.dtype, x.device)
        flat = x.reshape(x.shape[0], -1)
        dim = flat.shape[1]
        s2 = sigma.reshape(-1, 1).to(x.dtype) ** 2  # [B, 1]
        var = var0[None, :] + s2  # [B, K] variance of each noisy component
        sq = (flat[:, None, :] - mu[None, :, :]).pow(2).sum(-1)  # [B, K]
        logits = logw[None, :] - 0.5 * sq / var - 0.5 * dim * torch.log(var)
        gamma = torch.softmax(logits, dim=1)
        keep = gamma * var0[None, :] / var  # weight of x in each component's posterior mean
        # An elementwise sum rather than a matmul: BLAS kernels change with the batch size, and
        # a sample must depend on its seed only, bit for bit.
        pulled = ((gamma * s2 / var)[:, :, None] * mu[None, :, :]).sum(1)
        denoised = pulled + keep.sum(1, keepdim=True) * flat
        return denoised.reshape(x.shape)

    # -- exact facts about the data ----------------------------------------------------------
    def mean(self) -> np.ndarray:
        """The data mean, flattened (float64)."""
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        """The data covariance, flattened ``[d, d]`` (float64)."""
        m = self.mean()
        centred = self.means - m
        cov = (centred.T * self.weights) @ centred
        cov[np.diag_indices_from(cov)] += self.weights @ self.stds**2
        return cov

    def sample_data(self, n: int, *, seed: int = 0) -> np.ndarray:
        """``n`` exact draws from the data distribution, ``[n, *shape]`` (float64)."""
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        noise = rng.standard_normal((n, self.means.shape[1]))
        return (self.means[comp] + self.stds[comp, None] * noise).reshape(n, *self._shape)

    def save_spec(self, path: str | os.PathLike[str]) -> None:
        """Write the spec as JSON; ``diffsampler.get_model(path)`` rebuilds the same mixture."""
        Path(path).write_text(json.dumps({"model": SPEC_KIND, **self.spec}, indent=2) + "\n")

    def __repr__(self) -> str:
        return f"GaussianMixture(shape={self._shape}, components={len(self.weights)})"


def gmm(
    *,
    shape: tuple[int, ...] = (3, 32, 32),
    components: int = 8,
    spread: float = 0.1,
    seed: int = 0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    path: str | None = None,
) -> GaussianMixture:
    """Analytic Gaussian mixture (exact denoiser), image-shaped, seeded: the default model."""
    if path is not None:
        return _from_spec_file(path)
    if not sigma_min < sigma_max:
        raise OptionError(f"model 'gmm': need sigma_min < sigma_max, got {sigma_min:g} and {sigma_max:g}")
    rng = np.random.default_rng(seed)
    means = _smooth_means(rng, components, tuple(shape))
    stds = rng.uniform(0.5 * spread, spread, size=components)
    weights = rng.uniform(0.5, 1.5, size=components)
    spec = dict(
        shape=list(shape), components=components, spread=spread, seed=seed,
        sigma_min=sigma_min, sigma_max=sigma_max,
    )
    return GaussianMixture(
        means, stds, weights / weights.sum(), sigma_min=sigma_min, sigma_max=sigma_max, spec=spec
    )


def _from_spec_file(path: str) -> GaussianMixture:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the gmm spec {path!r}: {exc}") from None
    if not isinstance(data, dict) or data.pop("model", None) != SPEC_KIND:
        raise ModelLoadError(f"{path!r} is not a gmm spec (expected a JSON object with \"model\": \"gmm\")")
    try:
        options = GMMOptions(**data)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"gmm spec {path!r}: {exc}") from None
    return gmm(**{k: v for k, v in attrs.asdict(options).items() if k != "path"})


def loads_file(path: Path) -> bool:
    """``get_model(path)`` asks this: a JSON spec written by :meth:`GaussianMixture.save_spec`."""
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("model") == SPEC_KIND
    except (OSError, ValueError, AttributeError):
        return False


gmm.paper = GaussianMixture.paper  # type: ignore[attr-defined]
gmm.loads_file = loads_file  # type: ignore[attr-defined]
gmm.file_format = "a Gaussian-mixture spec (.json written by GaussianMixture.save_spec)"  # type: ignore[attr-defined]
