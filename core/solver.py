"""Shared sampling mechanics: subclass :class:`ODESolver` and write only the update rule.

The base class owns everything around a step: checking the sigmas, the analytical first step
(AFS), denoise-to-zero, trajectory capture, NFE counting, the progress callback, and the checks
of the denoiser's output (shape at once; non-finite values flagged on the device and reported
after the loop, so the loop has no host-device synchronisation).

A solver sees the run through :class:`Run`: ``run.sigmas`` (host floats, float64),
``run.coefficients`` (what :meth:`ODESolver.prepare` computed on the host for this schedule),
``run.denoise`` / ``run.derivative`` (one NFE each) and ``run.history`` (its own scratch list).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import OptionError, PluginError, SamplingError, UnreachableNFEError
from .options import build_options
from .protocols import Denoiser, SampleResult, StepCallback
from .sigmas import sigma_tuple

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ODESolver", "Run", "steps_for_nfe"]


class Run:
    """The state of one sampling run, handed to :meth:`ODESolver.step`."""

    def __init__(
        self,
        denoiser: Denoiser,
        sigmas: tuple[float, ...],
        *,
        cond: Any,
        afs: bool,
        coefficients: Any,
        check_finite: bool = True,
    ) -> None:
        self.denoiser = denoiser
        self.sigmas = sigmas
        self.num_steps = len(sigmas)
        self.cond = cond
        self.coefficients = coefficients
        self.history: list[Any] = []
        self.step_index = 0
        self.nfe = 0
        self._afs_pending = afs
        self._check_finite = check_finite
        self._finite_flags: list[Tensor] = []
        self._flag_where: list[tuple[int, float]] = []
        self._sigma_cache: dict[float, Tensor] = {}

    @property
    def afs_pending(self) -> bool:
        """True until the first evaluation, when AFS will replace it."""
        return self._afs_pending

    def _sigma_tensor(self, x: Tensor, sigma: float) -> Tensor:
        import torch

        cached = self._sigma_cache.get(sigma)
        if cached is None or cached.shape[0] != x.shape[0]:
            cached = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
            self._sigma_cache[sigma] = cached
        return cached

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        """``D(x; sigma)``, the model's estimate of the clean sample (one NFE).

        With AFS, the first call of a run returns ``x - sigma * x / sqrt(1 + sigma^2)`` instead:
        the denoiser output if the data were a point mass at zero with unit-scaled noise
        (Zhou et al. 2024, AMED, Sec. 3.3), and spends no NFE.
        """
        if self._afs_pending:
            self._afs_pending = False
            return x - (sigma / math.sqrt(1.0 + sigma * sigma)) * x
        out = self.denoiser(x, self._sigma_tensor(x, sigma), self.cond)
        self.nfe += 1
        if out.shape != x.shape:
            raise SamplingError(
                f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)} "
                f"at step {self.step_index} (sigma={sigma:.6g})"
            )
        if self._check_finite:
            import torch

            # min and max are NaN or infinite whenever any element is: two scalars to check
            # instead of a full-size isfinite mask (10x cheaper), and no host sync.
            self._finite_flags.append(torch.isfinite(torch.stack(torch.aminmax(out))).all())
            self._flag_where.append((self.step_index, sigma))
        return out

    def derivative(self, x: Tensor, sigma: float) -> Tensor:
        """``dx/dsigma = (x - D(x; sigma)) / sigma`` (one NFE; AFS as in :meth:`denoise`)."""
        if self._afs_pending:
            self._afs_pending = False
            return x / math.sqrt(1.0 + sigma * sigma)
        return (x - self.denoise(x, sigma)) / sigma

    def raise_if_not_finite(self) -> None:
        """One host sync after the loop: name the first evaluation that was not finite."""
        if not self._finite_flags:
            return
        import torch

        flags = torch.stack(self._finite_flags).cpu()
        if bool(flags.all()):
            return
        k = int((~flags).nonzero()[0])
        step, sigma = self._flag_where[k]
        raise SamplingError(
            f"the denoiser returned non-finite values at step {step} (sigma={sigma:.6g})"
        )


class ODESolver:
    """Base class of solvers: set ``Options``, ``paper`` and ``order``; implement :meth:`step`.

    ``evals_per_step`` is the denoiser evaluations one step spends (2 for Heun's method); the NFE
    of a run is ``evals_per_step * (num_steps - 1) - afs + denoise_to_zero``. A solver whose
    cost is not of that form overrides :meth:`nfe`.
    """

    Options: ClassVar[type | None] = None
    paper: ClassVar[str] = ""
    evals_per_step: ClassVar[int] = 1
    order: int = 1
    #: The registered schedule (and its options) the method's paper or the seed pairs it with.
    recommended_schedule: ClassVar[tuple[str, dict[str, Any]]] = ("polynomial", {"rho": 7.0})

    def __init__(self, **options: Any) -> None:
        owner = f"solver {getattr(self, 'name', type(self).__name__)}"
        if type(self).step is ODESolver.step:
            raise PluginError(f"{owner} does not implement step(run, x, i), the update rule")
        if self.Options is None and options:
            raise OptionError(f"{owner} takes no options, got {', '.join(options)}")
        self.options: Any = build_options(self.Options, options, owner=owner)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})" if self.options else f"{type(self).__name__}()"

    # -- what a subclass writes ------------------------------------------------------------
    def prepare(self, sigmas: tuple[float, ...]) -> Any:
        """Host-side (float64) coefficients for this schedule; stored as ``run.coefficients``."""
        return None

    def check(self, denoiser: Denoiser, sigmas: Sequence[float], *, afs: bool = False) -> None:
        """Refuse a run this solver cannot do with an :class:`OptionError` (:class:`ChecksRun`).

        Called by :meth:`sample` and by ``diffsampler sample``/``compare`` before anything is
        sampled; a learned solver checks here that its file fits the model, sigmas and AFS.
        """

    def denoiser_for_run(self, denoiser: Denoiser, sigmas: tuple[float, ...]) -> Denoiser:
        """The denoiser the steps evaluate: ``denoiser`` itself, unless the solver brings its own
        network in the model's place (a distilled SFD student)."""
        return denoiser

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        """Advance ``x`` from ``run.sigmas[i]`` to ``run.sigmas[i + 1]``."""
        raise NotImplementedError

    # -- shared mechanics ------------------------------------------------------------------
    def nfe(self, num_steps: int, *, afs: bool = False, denoise_to_zero: bool = False) -> int:
        """The exact number of denoiser evaluations of a run with ``num_steps`` sigmas."""
        if num_steps < 2:
            raise OptionError(f"num_steps must be >= 2, got {num_steps}")
        return self.evals_per_step * (num_steps - 1) - int(afs) + int(denoise_to_zero)

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
        check_finite: bool = True,
    ) -> SampleResult:
        """Solve the probability-flow ODE from ``x`` at ``sigmas[0]`` down to ``sigmas[-1]``.

        ``check_finite=False`` skips the (sync-free) per-evaluation finiteness flags and the one
        host synchronisation after the loop; CUDA-graph capture needs that.
        """
        import torch

        levels = sigma_tuple(sigmas)
        shape = getattr(denoiser, "shape", None)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise SamplingError(
                f"x has sample shape {tuple(x.shape[1:])} but the model expects {tuple(shape)}"
            )
        self.check(denoiser, levels, afs=afs)
        run = Run(self.denoiser_for_run(denoiser, levels), levels, cond=cond, afs=afs, coefficients=self.prepare(levels),
                  check_finite=check_finite)
        points = [x] if return_trajectory else []
        total = len(levels) - 1
        with torch.no_grad():
            for i in range(total):
                run.step_index = i
                new = self.step(run, x, i)
                if new.shape != x.shape:  # host-side metadata: no synchronisation
                    raise PluginError(
                        f"solver {type(self).__name__}: step {i} returned shape {tuple(new.shape)} "
                        f"for a state shaped {tuple(x.shape)}"
                    )
                x = new
                if return_trajectory:
                    points.append(x)
                if callback is not None:
                    callback(i + 1, total, x)
            if denoise_to_zero:
                run.step_index = total
                x = run.denoise(x, levels[-1])
                if return_trajectory:
                    points.append(x)
        run.raise_if_not_finite()
        expected = self.nfe(len(levels), afs=afs, denoise_to_zero=denoise_to_zero)
        if run.nfe != expected:  # a solver whose nfe() disagrees with its step() is a bug
            raise PluginError(
                f"solver {type(self).__name__}: spent {run.nfe} NFE but its nfe() says {expected} "
                "(set evals_per_step or override nfe())"
            )
        return SampleResult(
            x=x,
            nfe=run.nfe,
            trajectory=torch.stack(points) if return_trajectory else None,
            sigmas=torch.tensor(levels, dtype=torch.float64),
        )


def steps_for_nfe(
    solver: Any, nfe: int, *, afs: bool = False, denoise_to_zero: bool = False
) -> int:
    """The ``num_steps`` at which ``solver`` spends exactly ``nfe`` evaluations.

    Raises :class:`OptionError` naming the nearest reachable NFEs when there is none.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise OptionError(f"nfe must be a positive integer, got {nfe!r}")
    reachable = []
    for n in range(2, 2 * nfe + 4):
        spent = solver.nfe(n, afs=afs, denoise_to_zero=denoise_to_zero)
        if spent == nfe:
            return n
        if spent > 0:
            reachable.append(spent)
        if spent > nfe:
            break
    below = max((r for r in reachable if r < nfe), default=None)
    above = min((r for r in reachable if r > nfe), default=None)
    near = " or ".join(str(r) for r in (below, above) if r is not None)
    name = getattr(solver, "name", type(solver).__name__)
    raise UnreachableNFEError(
        f"NFE {nfe} is not reachable with {name}"
        + (" and AFS" if afs else "")
        + (f"; nearest: {near}" if near else "")
    )
