"""Exact metrics for analytic models: error to the exact ODE endpoint, Frechet distance to the
data's true moments."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler.errors import OptionError
from diffsampler.options import in_range, option, positive
from diffsampler.protocols import Analytic, Denoiser

if TYPE_CHECKING:
    from torch import Tensor


def _stack(batches: Iterable[Tensor | np.ndarray]) -> np.ndarray:
    arrays = [b.detach().cpu().double().numpy() if hasattr(b, "detach") else np.asarray(b, np.float64)
              for b in batches]
    if not arrays:
        raise OptionError("no samples to measure")
    return np.concatenate(arrays).reshape(sum(len(a) for a in arrays), -1)


def _need_analytic(model: Denoiser | None, metric: str) -> Analytic:
    if model is None or not isinstance(model, Analytic):
        raise OptionError(
            f"metric {metric!r} needs an analytic model (gmm, empirical), got {type(model).__name__}"
        )
    return model


class ExactEndpointError:
    """Mean (over seeds) RMS distance to the exact ODE endpoint at sigma_min, per coordinate.

    ``sqrt(mean_j (x_j - x*_j)^2)`` averaged over samples; ``x*`` from a DOP853 solve at
    ``rtol = 1e-10`` (see ``ground_truth``). Zero means the solver found the exact ODE solution.
    """

    paper = "Error to the exact probability-flow ODE solution (analytic testbed)"
    higher_is_better = False

    def __init__(self) -> None:
        self._truth: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def compute(
        self,
        batches: Iterable[Tensor],
        *,
        model: Denoiser | None = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, float]:
        from diffsampler.plugins.models.ground_truth import exact_endpoints

        analytic = _need_analytic(model, "l2-exact")
        if seeds is None:
            raise OptionError("metric 'l2-exact' needs the seeds of the samples")
        x = _stack(batches)
        key = (id(analytic), tuple(int(s) for s in seeds))
        if key not in self._truth:  # one comparison asks for the same seeds in every cell
            self._truth[key] = exact_endpoints(analytic, seeds).endpoints.reshape(len(seeds), -1)
        truth = self._truth[key]
        if truth.shape != x.shape:
            raise OptionError(f"{x.shape[0]} samples for {len(seeds)} seeds")
        return {"l2": float(np.sqrt(((x - truth) ** 2).mean(1)).mean())}


def frechet_to_moments(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """Frechet distance between the Gaussian fit of samples ``x`` ``[n, d]`` and ``N(mean, cov)``.

    ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2`` with ``S1 = A A^T`` the sample
    covariance (N - 1). The nonzero eigenvalues of ``S1^1/2 S2 S1^1/2`` are those of the small
    ``A^T S2 A`` (n x n), so no d x d square root is needed: exact and cheap for n << d.
    """
    n = x.shape[0]
    if n < 2:
        raise OptionError("the Frechet distance needs at least 2 samples")
    mu = x.mean(0)
    a = (x - mu).T / math.sqrt(n - 1)
    small = a.T @ (cov @ a)
    eig = np.linalg.eigvalsh((small + small.T) / 2)
    eig = eig[eig > eig.max(initial=0.0) * len(eig) * np.finfo(np.float64).eps]  # drop round-off
    trace_sqrt = float(np.sqrt(eig).sum())
    return float(((mu - mean) ** 2).sum() + (a * a).sum() + np.trace(cov) - 2 * trace_sqrt)


def top_directions(cov: np.ndarray, k: int, *, iterations: int = 8) -> np.ndarray:
    """An orthonormal basis ``[d, k]`` of the top-``k`` eigenspace of ``cov``.

    Subspace iteration from a fixed random start (Halko et al. 2011, Alg. 4.4): a few products
    with ``cov`` instead of a full ``d^3`` eigendecomposition; deterministic.
    """
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(cov @ rng.standard_normal((cov.shape[0], k + 8)))
    for _ in range(iterations):
        q, _ = np.linalg.qr(cov @ q)
    _, vectors = np.linalg.eigh(q.T @ cov @ q)  # Rayleigh-Ritz in the small subspace
    return q @ vectors[:, ::-1][:, :k]


@attrs.frozen(kw_only=True)
class FrechetOptions:
    dims: int = option(
        16, help="principal directions of the true covariance to measure in (0: all)",
        validator=in_range(0),
    )


class ExactFrechetDistance:
    """Frechet distance between the samples' Gaussian fit and the data's exact mean/covariance.

    FID's formula (Heusel et al. 2017) applied in data space against the true moments, so no
    feature network and no reference sample is involved. By default it is measured in the span
    of the top ``dims`` principal directions of the true covariance: a few dozen samples cannot
    estimate a 3,072-dimensional covariance, but they do estimate its leading directions, where a
    mixture's structure (which mode, how far apart) lives. ``dims=0`` uses every dimension. With
    n samples the distance has a positive floor (the exact endpoints' own distance), which
    ``compare`` reports beside the solvers.
    """

    paper = "Heusel et al. 2017 (Frechet distance), against the model's exact moments"
    higher_is_better = False

    def __init__(self, dims: int = 16) -> None:
        self.dims = dims
        self._moments: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def _basis(self, analytic: Analytic) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        key = id(analytic)
        if key not in self._moments:
            mean, cov = np.asarray(analytic.mean()), np.asarray(analytic.covariance())
            basis = None
            if 0 < self.dims < len(mean):
                basis = top_directions(cov, self.dims)
                mean, cov = mean @ basis, basis.T @ cov @ basis
            self._moments[key] = (mean, cov, basis)
        return self._moments[key]

    def compute(
        self,
        batches: Iterable[Tensor],
        *,
        model: Denoiser | None = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, float]:
        mean, cov, basis = self._basis(_need_analytic(model, "fd-exact"))
        x = _stack(batches)
        return {"fd": frechet_to_moments(x if basis is None else x @ basis, mean, cov)}


def exact_error() -> ExactEndpointError:
    """Mean RMS error to the exact ODE endpoint (analytic models)."""
    return ExactEndpointError()


def exact_frechet(*, dims: int = 16) -> ExactFrechetDistance:
    """Frechet distance to the exact data moments (analytic models)."""
    return ExactFrechetDistance(dims=dims)


exact_error.paper = ExactEndpointError.paper  # type: ignore[attr-defined]
exact_frechet.paper = ExactFrechetDistance.paper  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class TeacherOptions:
    teacher: str = option("heun", help="solver of the reference run")
    teacher_steps: int = option(
        101, help="noise levels of the reference run (heun: 2 NFE per step)", validator=in_range(2)
    )
    rho: float = option(7.0, help="polynomial schedule exponent of the reference run", validator=positive)


class TeacherEndpointError:
    """Mean (over seeds) RMS distance to a fine reference run from the same noise.

    For models whose ODE has no exact solution (neural networks): the reference is ``teacher``
    on a polynomial schedule with ``teacher_steps`` points (default Heun, 200 NFE), started from
    the same seeded noise and the same class labels (or prompts); computed once per model, seed
    set and labels.
    """

    paper = "Error to a fine teacher run (the distillation papers' training target)"
    higher_is_better = False
    uses_labels = True  # the teacher runs each seed with the class its sample was drawn for

    def __init__(self, *, teacher: str = "heun", teacher_steps: int = 101, rho: float = 7.0) -> None:
        self.teacher, self.teacher_steps, self.rho = teacher, teacher_steps, rho
        self._reference: dict[tuple[Any, ...], np.ndarray] = {}

    def reference(self, model: Denoiser, seeds: Sequence[int], dtype: Any,
                  labels: Sequence[int] | None = None) -> np.ndarray:
        import torch

        import diffsampler as ds

        key = (id(model), tuple(int(s) for s in seeds), dtype, None if labels is None else tuple(labels))
        if key not in self._reference:
            solver = ds.get_solver(self.teacher)
            sigmas = ds.get_schedule("polynomial", rho=self.rho).sigmas(
                self.teacher_steps, model.sigma_min, model.sigma_max, denoiser=model
            )
            rows = []
            for start in range(0, len(seeds), 64):
                chunk = list(seeds)[start : start + 64]
                x = ds.seed_noise(chunk, model.shape, dtype=dtype) * float(sigmas[0])
                cond = None if labels is None else torch.tensor(list(labels)[start : start + 64])
                with torch.no_grad():
                    rows.append(solver.sample(model, x, sigmas, cond=cond).x.double().cpu().numpy())
            self._reference[key] = np.concatenate(rows).reshape(len(seeds), -1)
        return self._reference[key]

    def compute(
        self,
        batches: Iterable[Tensor],
        *,
        model: Denoiser | None = None,
        seeds: Sequence[int] | None = None,
        labels: Sequence[int] | None = None,
    ) -> dict[str, float]:
        if model is None or seeds is None:
            raise OptionError("metric 'l2-teacher' needs the model and the seeds of the samples")
        batches = list(batches)
        dtype = batches[0].dtype if batches and hasattr(batches[0], "dtype") else None
        x = _stack(batches)
        ref = self.reference(model, seeds, dtype, labels)
        if ref.shape != x.shape:
            raise OptionError(f"{x.shape[0]} samples for {len(seeds)} seeds")
        return {"l2_teacher": float(np.sqrt(((x - ref) ** 2).mean(1)).mean())}


def teacher_error(*, teacher: str = "heun", teacher_steps: int = 101, rho: float = 7.0) -> TeacherEndpointError:
    """Mean RMS error to a fine teacher run from the same noise (any model)."""
    return TeacherEndpointError(teacher=teacher, teacher_steps=teacher_steps, rho=rho)


teacher_error.paper = TeacherEndpointError.paper  # type: ignore[attr-defined]
