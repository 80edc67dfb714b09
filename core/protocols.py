"""The typed protocols every component implements.

Conventions are EDM's (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): a noisy sample is ``x = x0 + sigma * eps``, a :class:`Denoiser` returns the
estimate ``D(x; sigma)`` of ``x0``, and the probability-flow ODE is
``dx/dsigma = (x - D(x; sigma)) / sigma``. A schedule is a decreasing 1-D tensor of ``num_steps``
noise levels, so a run takes ``num_steps - 1`` steps.

Every protocol is ``runtime_checkable``: ``isinstance(obj, Denoiser)`` checks that the members
exist (not their signatures). Optional model capabilities are small extra protocols, so a
solver or schedule asks ``isinstance(model, TimeMapped)`` instead of special-casing models.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "Analytic",
    "Artifact",
    "ChecksRun",
    "ClassConditional",
    "Compilable",
    "Decodable",
    "Denoiser",
    "Distiller",
    "HasBottleneck",
    "Metric",
    "SampleResult",
    "SamplesItself",
    "Schedule",
    "Solver",
    "StepCallback",
    "TimeMapped",
]


@runtime_checkable
class Denoiser(Protocol):
    """A diffusion model in EDM's form: ``D(x; sigma)`` estimates the clean sample.

    ``shape`` is the shape of one sample (e.g. ``(3, 32, 32)``; for latent models the latent
    shape). ``sigma`` is a 1-D tensor with one noise level per batch element, in ``x``'s dtype
    and on its device. ``cond`` carries class labels, prompts' embeddings or any other
    conditioning the model understands; ``None`` means unconditional.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor: ...


@runtime_checkable
class TimeMapped(Protocol):
    """A model trained on its own time variable (e.g. discrete DDPM steps).

    The ``discrete`` schedule spaces its steps in this time and maps them back to sigma.
    Both maps act elementwise on float64 tensors.
    """

    def sigma_to_t(self, sigma: Tensor) -> Tensor: ...

    def t_to_sigma(self, t: Tensor) -> Tensor: ...


@runtime_checkable
class Decodable(Protocol):
    """A latent model: ``decode`` maps a sampled latent to an image in ``[-1, 1]``."""

    def decode(self, latent: Tensor) -> Tensor: ...


@runtime_checkable
class HasBottleneck(Protocol):
    """A network whose bottleneck features can be read in the same forward pass (AMED uses it).

    ``denoise_with_features`` returns ``(D(x; sigma), features)``, features shaped
    ``(batch, bottleneck_channels, h, w)``.
    """

    @property
    def bottleneck_channels(self) -> int: ...

    def denoise_with_features(
        self, x: Tensor, sigma: Tensor, cond: Any = None
    ) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class ClassConditional(Protocol):
    """A model that takes class labels through ``cond`` (integer indices ``[batch]``).

    ``label_dim`` is the number of classes (0: the model is unconditional after all). An optional
    ``check_labels(choice)`` (``None``, ``"random"``, ``"seed"`` or a class index as a string)
    refuses, while a run is planned, labels the model cannot take, in its own words (prompts).
    """

    @property
    def label_dim(self) -> int: ...


@runtime_checkable
class Compilable(Protocol):
    """A neural model that can return a ``torch.compile``-d copy of itself (same outputs)."""

    def compiled(self, mode: str = "default") -> Denoiser: ...


@runtime_checkable
class SamplesItself(Protocol):
    """A model that knows how it is meant to be sampled (a distilled student: its solver,
    schedule, number of sigmas, AFS), or a learned solver that does (an AMED predictor: its
    number of sigmas and AFS). ``sample`` uses these where the user gave none.

    Keys of ``sampling_defaults``: ``solver``, ``solver_options``, ``schedule``,
    ``schedule_options``, ``num_steps``, ``afs`` (used with the model's own solver only) and
    ``labels`` (``sample --labels``; always), each optional.
    """

    @property
    def sampling_defaults(self) -> dict[str, Any]: ...


@runtime_checkable
class Analytic(Protocol):
    """A model whose data distribution is known exactly (Gaussian mixtures, finite data sets).

    ``spec`` identifies the problem (it keys ground-truth caches and is saved with results);
    ``mean`` and ``covariance`` are the data's exact moments, flattened, float64 numpy.
    """

    @property
    def spec(self) -> dict[str, Any]: ...

    def mean(self) -> Any: ...

    def covariance(self) -> Any: ...


@runtime_checkable
class Schedule(Protocol):
    """A time schedule: ``num_steps`` decreasing noise levels from ``sigma_max`` to ``sigma_min``.

    The result is a float64 CPU tensor (solvers derive their coefficients from it on the host).
    ``denoiser`` is passed for schedules that need the model (e.g. its own time variable).
    """

    def sigmas(
        self,
        num_steps: int,
        sigma_min: float,
        sigma_max: float,
        denoiser: Denoiser | None = None,
    ) -> Tensor: ...


StepCallback = Callable[[int, int, "Tensor"], None]
"""Called after every step with ``(steps_done, total_steps, x)``."""


@attrs.frozen(kw_only=True)
class SampleResult:
    """What a solver returns.

    ``x``: the samples; ``nfe``: denoiser evaluations actually spent per sample;
    ``trajectory``: ``[num_points, batch, ...]`` including the start (and the denoised end point
    with ``denoise_to_zero``), or ``None`` unless asked for; ``sigmas``: the noise levels used.
    """

    x: Tensor
    nfe: int
    trajectory: Tensor | None = None
    sigmas: Tensor | None = None


@runtime_checkable
class Solver(Protocol):
    """An ODE solver for the probability-flow ODE.

    ``x`` is the state at ``sigmas[0]`` (unit noise times ``sigmas[0]``). With ``afs`` the first
    evaluation is replaced by the analytical first step ``d = x / sqrt(1 + sigma^2)`` (one NFE
    fewer); with ``denoise_to_zero`` a final evaluation maps the result at ``sigmas[-1]`` to its
    clean estimate (one NFE more). ``nfe`` predicts the evaluations of a run exactly.
    """

    def sample(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Tensor | Sequence[float],
        *,
        cond: Any = None,
        afs: bool = False,
        denoise_to_zero: bool = False,
        return_trajectory: bool = False,
        callback: StepCallback | None = None,
    ) -> SampleResult: ...

    def nfe(self, num_steps: int, *, afs: bool = False, denoise_to_zero: bool = False) -> int: ...


@runtime_checkable
class ChecksRun(Protocol):
    """A solver that can refuse a run before anything is sampled (a learned solver whose file was
    made for another model, NFE or AFS setting). ``check`` raises an
    :class:`~diffsampler.errors.OptionError` saying what was expected; ``sample`` and
    ``diffsampler sample``/``compare`` call it before the first evaluation."""

    def check(self, denoiser: Denoiser, sigmas: Sequence[float], *, afs: bool = False) -> None: ...


@runtime_checkable
class Artifact(Protocol):
    """Something a distiller learned (a schedule, a predictor, a student). It saves itself."""

    def save(self, path: str | os.PathLike[str]) -> None: ...


@runtime_checkable
class Distiller(Protocol):
    """Learns an :class:`Artifact` from a teacher model: GITS, AMED and SFD are distillers.

    The artefact is itself usable as a Schedule, Solver or Denoiser; ``load`` reads one back.
    """

    def distill(
        self, teacher: Denoiser, *, progress: Callable[[Mapping[str, float]], None] | None = None
    ) -> Artifact: ...

    def load(self, path: str | os.PathLike[str]) -> Artifact: ...


@runtime_checkable
class Metric(Protocol):
    """A quality measure: consumes batches of samples, returns named numbers.

    ``model`` and ``seeds`` are given where known, for metrics that compare with an exact answer
    (analytic models); image metrics ignore them. A metric that pairs each sample with the class
    or prompt it was generated from (CLIP score) sets ``uses_labels = True`` and then also gets
    ``labels`` (one index per seed) when the run has them. ``higher_is_better = True`` marks
    scores (``compare`` stars the largest value). An optional ``check_run(seeds=, labels=)``
    refuses, before ``compare`` samples anything, a run the metric cannot score.
    """

    def compute(
        self,
        batches: Iterable[Tensor],
        *,
        model: Denoiser | None = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, float]: ...
