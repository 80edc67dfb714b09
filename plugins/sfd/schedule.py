"""The ``sfd`` schedule: the sigmas a distilled SFD student was trained on, read from its file."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diffsampler import Denoiser, ScheduleBase
from diffsampler.errors import ModelLoadError, OptionError

from .format import PAPER, read_student_json
from .options import SFDScheduleOptions

__all__ = ["SFDScheduleFile"]

_RTOL = 1e-6


class SFDScheduleFile(ScheduleBase):
    """The student's stored schedule (``--schedule sfd --schedule-opt file=student.json``)."""

    Options = SFDScheduleOptions
    paper = PAPER

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.stored: tuple[float, ...] | None = None
        self.afs = False
        if self.options.file is not None:
            try:
                _, data = read_student_json(self.options.file)
            except ModelLoadError as exc:
                raise OptionError(str(exc)) from None
            self.stored = tuple(float(s) for s in data["sigmas"])
            self.afs = bool(data.get("afs", False))

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        s = self.stored
        if s is None:
            raise OptionError(
                "schedule 'sfd' needs a student file: --schedule-opt file=FILE (written by diffsampler sfd train)"
            )
        if num_steps != len(s):
            afs = " and --afs" if self.afs else ""
            raise OptionError(
                f"the SFD student {self.options.file!r} was trained on {len(s)} sigmas "
                f"(sample with --steps {len(s)}{afs}), but {num_steps} were asked for"
            )
        close = math.isclose
        if not (close(s[0], sigma_max, rel_tol=_RTOL) and close(s[-1], sigma_min, rel_tol=_RTOL)):
            raise OptionError(
                f"the SFD student {self.options.file!r} spans sigma {s[-1]:g}..{s[0]:g}, "
                f"but the run asks for {sigma_min:g}..{sigma_max:g}"
            )
        return np.asarray(s, dtype=np.float64)
