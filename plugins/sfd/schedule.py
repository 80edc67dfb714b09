"""The ``sfd`` schedule: the sigmas a distilled SFD student was trained on, read from its file
(option ``file``) or, without one, from the SFD student being sampled. They must lie inside the
run's sigma range (a student's own range, or its teacher's when it stands in for it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffsampler import Denoiser, ScheduleBase
from diffsampler.errors import ModelLoadError, OptionError

from .format import PAPER, read_student_json, sigma_table_of
from .options import SFDScheduleOptions

__all__ = ["SFDScheduleFile"]

_RTOL = 1e-6


class SFDScheduleFile(ScheduleBase):
    """The student's stored schedule (``--schedule sfd --schedule-opt file=student.json``)."""

    Options = SFDScheduleOptions
    paper = PAPER

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.table: dict[int, tuple[float, ...]] | None = None
        self.afs = False
        if self.options.file is not None:
            try:
                _, data = read_student_json(self.options.file)
            except ModelLoadError as exc:
                raise OptionError(str(exc)) from None
            self.table = sigma_table_of(data)
            self.afs = bool(data.get("afs", False))

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        table, afs, what = self.table, self.afs, repr(self.options.file)
        served = getattr(denoiser, "sigma_table", None) is not None
        if table is None and served:
            table, afs, what = denoiser.sigma_table, denoiser.afs, repr(denoiser.name)  # type: ignore[union-attr]
        if table is None:
            raise OptionError(
                "schedule 'sfd' needs an SFD student: sample one (--model FILE.json) or pass "
                "--schedule-opt file=FILE (written by diffsampler sfd train)"
            )
        if num_steps not in table:
            counts = " or ".join(str(n) for n in table)
            nfes = " or ".join(str(n - 1 - int(afs)) for n in table)  # Euler: one NFE per step
            flag = " --afs" if afs else ""
            raise OptionError(
                f"the SFD student {what} was trained on {counts} sigmas {'with' if afs else 'without'} AFS "
                f"(run it with --nfe {nfes}{flag}, or --steps {counts}{flag}), but {num_steps} were asked for"
            )
        serving = getattr(denoiser, "step_condition", None) if served else None
        if serving is not None and serving != num_steps:
            raise OptionError(
                f"the SFD-v student serves {serving} sigmas (model option steps={serving}) but the run asks "
                f"for {num_steps}: pass --model-opt steps={num_steps} or --steps {serving}"
            )
        s = table[num_steps]
        # A student trained on a narrower range than its teacher's (SFD's default 0.006..80 inside
        # EDM's 0.002..80) runs on its own sigmas when it stands in for the teacher (solver sfd).
        if s[-1] < sigma_min * (1 - _RTOL) or s[0] > sigma_max * (1 + _RTOL):
            raise OptionError(
                f"the SFD student {what} spans sigma {s[-1]:g}..{s[0]:g}, "
                f"outside the run's {sigma_min:g}..{sigma_max:g}"
            )
        return np.asarray(s, dtype=np.float64)
