"""The ``sfd`` solver: a row of the teacher's comparison table sampled by its SFD student.

``diffsampler compare --model digits --solver "sfd[student=s.json]" --solver ipndm --nfe 2,3 ...``
puts a distilled student beside the training-free solvers on the same teacher, noise and metric:
given the teacher (checked by the SHA-256 of its weights, recorded in the student file), the
solver runs Euler steps (Zhou et al. 2024, the student's sampler; EDM's Euler step
``x + (sigma_next - sigma) (x - D(x; sigma)) / sigma``) with the student network on the student's
own sigmas, which its recommended schedule (``sfd`` on the same file) supplies. An SFD-v student
serves every step count it was trained for, so one row covers all of its NFEs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from diffsampler import ODESolver, Run
from diffsampler.errors import OptionError

from .format import PAPER
from .options import SFDSolverOptions

if TYPE_CHECKING:
    from torch import Tensor

    from .student import SFDStudent

__all__ = ["SFDSolver"]

_RTOL = 1e-6


class SFDSolver(ODESolver):
    """Euler with the SFD student in place of its teacher (option ``student=FILE``)."""

    Options = SFDSolverOptions
    paper = PAPER
    order = 1

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.student: SFDStudent | None = None
        self._teachers_checked: set[int] = set()
        if self.options.student is not None:
            from .student import load_student

            self.student = load_student(self.options.student)
            self.recommended_schedule = ("sfd", {"file": self.options.student})

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """What the student was trained for (:class:`diffsampler.SamplesItself`), for what a run
        leaves open: its step count, its AFS and its class labels (``random`` for a student
        trained on random classes), so that ``sample``/``compare`` run it as trained."""
        if self.student is None:
            return {}
        own = self.student.sampling_defaults
        plan = {"num_steps": own["num_steps"], "afs": own["afs"]}
        return {**plan, "labels": own["labels"]} if "labels" in own else plan

    def _need(self) -> SFDStudent:
        if self.student is None:
            raise OptionError("solver 'sfd' needs a student: --opt student=FILE (written by diffsampler sfd train)")
        return self.student

    def _check_teacher(self, denoiser: Any) -> None:
        """The denoiser must be the network the student was distilled from."""
        student = self._need()
        net = getattr(denoiser, "net", None)
        if net is None or id(net) in self._teachers_checked:
            if net is None:
                raise OptionError(
                    f"solver 'sfd' runs a student in place of its EDM teacher; model {type(denoiser).__name__} "
                    f"is not one (the student {self.options.student!r} was distilled from "
                    f"{student.teacher.get('name', 'an EDM network')!r})"
                )
            return
        from .trainer import fingerprint

        if fingerprint(net) != student.teacher.get("fingerprint"):
            raise OptionError(
                f"the SFD student {self.options.student!r} was distilled from another network "
                f"({student.teacher.get('name', 'unknown')!r}); compare it on that model, or sample the "
                f"student itself with --model {self.options.student}"
            )
        self._teachers_checked.add(id(net))

    def check(self, denoiser: Any, sigmas: Sequence[float], *, afs: bool = False) -> None:
        """The student must exist, come from ``denoiser``, and fit these sigmas and AFS setting."""
        student = self._need()
        self._check_teacher(denoiser)
        if bool(afs) != student.afs:
            way = "with" if student.afs else "without"
            raise OptionError(f"the SFD student {self.options.student!r} was trained {way} AFS: run {way} --afs")
        levels = [float(s) for s in sigmas]
        trained = student.sigma_table.get(len(levels))
        if trained is None or not all(math.isclose(a, b, rel_tol=_RTOL) for a, b in zip(levels, trained, strict=True)):
            counts = " or ".join(str(n) for n in student.sigma_table)
            raise OptionError(
                f"the SFD student {self.options.student!r} runs on its own {counts} sigmas "
                f"(schedule sfd[file={self.options.student}]), not on these {len(levels)}"
            )

    def denoiser_for_run(self, denoiser: Any, sigmas: tuple[float, ...]) -> Any:
        return self._need().with_steps(len(sigmas))

    def step(self, run: Run, x: Tensor, i: int) -> Tensor:
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        return x + (sigma_next - sigma) * run.derivative(x, sigma)
