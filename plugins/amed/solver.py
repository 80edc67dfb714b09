"""AMED-Solver (``amed``) and AMED-Plugin solvers (``amed-euler``, ``amed-ipndm``, ``amed-dpm``,
``amed-dpmpp``): sampling with a trained predictor file.

Zhou et al. CVPR 2024, arXiv:2312.00094, Alg. 2. Every step spends two evaluations, so a run of
``num_steps`` sigmas costs ``2 (num_steps - 1) - afs`` NFE, counted by the
:class:`~diffsampler.ODESolver` base class. The predictor fixes the student, the number of
sigmas, the schedule, AFS and the student's settings (max_order, predict_x0, lower_order_final):
a run that asks for others is refused with one clear line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffsampler import ODESolver, Run
from diffsampler.errors import OptionError, SamplingError
from diffsampler.protocols import SampleResult

from .options import AMEDSolverOptions
from .predictor import AMEDPredictor, load_predictor
from .steps import AMEDStepper

__all__ = ["PAPER", "AMEDSolver", "RunEvaluator", "solver_class"]

PAPER = (
    "Zhou et al. 2024, Fast ODE-based Sampling for Diffusion Models in Around 5 Steps "
    "(AMED), CVPR 2024, arXiv:2312.00094"
)
_RTOL = 1e-5


class RunEvaluator:
    """Reaches the model through a sampling :class:`Run`: AFS and NFE as every solver."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def first(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor | None]:
        run = self.run
        if run.afs_pending:  # the base class's AFS, no NFE; the predictor reads a zero feature
            return x - sigma * run.derivative(x, sigma), None
        s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        denoised, feats = run.denoiser.denoise_with_features(x, s, run.cond)
        run.nfe += 1
        return self._checked(denoised, x), feats

    def mid(self, x: Tensor, sigma: Tensor) -> Tensor:
        run = self.run
        out = run.denoiser(x, sigma, run.cond)
        run.nfe += 1
        return self._checked(out, x)

    def _checked(self, out: Tensor, x: Tensor) -> Tensor:
        if out.shape != x.shape:
            raise SamplingError(
                f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)} "
                f"at step {self.run.step_index}"
            )
        return out


class AMEDSolver(ODESolver):
    """AMED-Solver: ``x_next = x + scale_dir (t_next - t) d(x_mid, t_mid)`` with a learned
    ``t_mid = t_next^r t^(1-r)`` (Zhou et al. 2024, Eq. 8-9); option ``predictor=FILE``."""

    Options = AMEDSolverOptions
    paper = PAPER
    student: ClassVar[str] = "amed"
    #: the registered name, which messages show (``steps_for_nfe`` reads it)
    name: ClassVar[str] = "amed"
    evals_per_step = 2
    order = 2

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.predictor: AMEDPredictor | None = None
        if self.options.predictor is not None:
            self.predictor = load_predictor(self.options.predictor)
            self._check_student()
            settings = self.predictor.settings
            self.recommended_schedule = (
                settings["schedule"], dict(settings.get("schedule_options", {}))
            )

    def _check_student(self) -> None:
        assert self.predictor is not None
        got = self.predictor.student
        if got != self.student:
            name = "amed" if got == "amed" else f"amed-{got}"
            raise OptionError(
                f"the predictor {self.options.predictor!r} was trained for student {got!r}: "
                f"sample with solver {name!r}, not {_name(self.student)!r}"
            )

    def _need(self) -> AMEDPredictor:
        if self.predictor is None:
            raise OptionError(
                f"solver {_name(self.student)!r} needs a predictor: --opt predictor=FILE "
                "(written by diffsampler amed train)"
            )
        return self.predictor

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """How the predictor is meant to be sampled: its schedule, number of sigmas, AFS and the
        class labels it was trained with (the keys of :class:`~diffsampler.SamplesItself`);
        empty without a predictor."""
        if self.predictor is None:
            return {}
        from diffsampler.labels import recorded_sampling_labels

        s = self.predictor.settings
        plan = {
            "schedule": s["schedule"], "schedule_options": dict(s.get("schedule_options", {})),
            "num_steps": self.predictor.num_steps, "afs": bool(s["afs"]),
        }
        labels = recorded_sampling_labels(s.get("labels"))
        return plan if labels is None else {**plan, "labels": labels}

    def nfe(self, num_steps: int, *, afs: bool = False, denoise_to_zero: bool = False) -> int:
        """As every solver's, but with a predictor an AFS setting other than its training is
        refused here: ``--nfe`` then names the predictor's reason, not an unreachable NFE."""
        self._check_afs(afs)
        return super().nfe(num_steps, afs=afs, denoise_to_zero=denoise_to_zero)

    def _check_afs(self, afs: bool) -> None:
        if self.predictor is None or bool(afs) == bool(self.predictor.settings["afs"]):
            return
        way = "with" if self.predictor.settings["afs"] else "without"
        raise OptionError(
            f"the AMED predictor {self.options.predictor!r} was trained {way} AFS: sample {way} --afs"
        )

    def check(self, denoiser: Any, sigmas: Sequence[float], *, afs: bool = False) -> None:
        """The predictor must exist and fit the model, these sigmas and the AFS setting."""
        pred = self._need()
        pred.check_model(denoiser)
        s = pred.settings
        self._check_afs(afs)
        if len(sigmas) != pred.num_steps:
            nfe = 2 * (pred.num_steps - 1) - int(s["afs"])
            raise OptionError(
                f"the AMED predictor {self.options.predictor!r} was trained for {pred.num_steps} "
                f"sigmas (--steps {pred.num_steps}, NFE {nfe}{' with --afs' if s['afs'] else ''}), "
                f"but {len(sigmas)} were asked for"
            )
        trained = s.get("sigmas")
        if trained and not all(math.isclose(a, b, rel_tol=_RTOL) for a, b in zip(sigmas, trained, strict=True)):
            raise OptionError(
                f"the AMED predictor {self.options.predictor!r} was trained on the "
                f"{s['schedule']!r} schedule {s.get('schedule_options', {})} "
                f"(sigma {trained[0]:g}..{trained[-1]:g}); this run's sigmas differ "
                f"(use {schedule_flags(s['schedule'], s.get('schedule_options', {}))})"
            )

    def sample(
        self, denoiser: Any, x: Tensor, sigmas: Tensor | Sequence[float], *, afs: bool = False,
        **kwargs: Any,
    ) -> SampleResult:
        self._need().to(x.device)
        result = super().sample(denoiser, x, sigmas, afs=afs, **kwargs)
        # the evaluations here bypass Run.denoise's per-evaluation flags: check the end point once
        if kwargs.get("check_finite", True) and not bool(torch.isfinite(result.x).all()):
            raise SamplingError(f"{_name(self.student)} produced non-finite samples")
        return result

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        pred = self._need()
        if i == 0:
            run.history[:] = [AMEDStepper(self.student, pred.settings, run.sigmas)]
        stepper: AMEDStepper = run.history[0]
        out, _ = stepper.step(x, i, RunEvaluator(run), pred)
        return out


def _name(student: str) -> str:
    return "amed" if student == "amed" else f"amed-{student}"


def solver_class(student: str) -> type[AMEDSolver]:
    """The AMED-Plugin solver class for ``student`` (``amed`` is AMED-Solver itself)."""
    if student == "amed":
        return AMEDSolver
    doc = (
        f"AMED-Plugin on {student}: two {student} half-steps per step through a learned "
        f"intermediate time (Zhou et al. 2024, Sec. 3.4); option predictor=FILE."
    )
    attrs = {"student": student, "name": _name(student), "__doc__": doc}
    return type(f"AMEDPlugin_{student}", (AMEDSolver,), attrs)


def schedule_flags(schedule: str, options: dict[str, Any]) -> str:
    """``--schedule NAME --schedule-opt k=v ...``: the flags that give a predictor's schedule."""
    from shlex import quote

    return " ".join([f"--schedule {quote(schedule)}", *(f"--schedule-opt {quote(f'{k}={v}')}" for k, v in options.items())])
