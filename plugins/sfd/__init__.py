"""SFD: simple and fast distillation (entry point ``sfd``).

Zhou et al. 2024, "Simple and Fast Distillation of Diffusion Models" (NeurIPS 2024,
arXiv:2409.19681): fine-tune a copy of the teacher network so that plain Euler steps on a coarse
schedule land where a finer teacher solver lands (1-5 NFE).

Registers the distiller ``sfd``, the model ``sfd`` (a student file: ``--model student.json``),
the schedule ``sfd`` (the student's stored sigmas), the solver ``sfd`` (the student sampling in
place of its teacher: a row of the teacher's comparison, ``--solver "sfd[student=FILE]"``) and
the command ``diffsampler sfd train``. This module imports no torch: the factories import the
implementation when they run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .format import PAPER, is_student_file
from .options import SFDModelOptions, SFDOptions, SFDScheduleOptions, SFDSolverOptions

if TYPE_CHECKING:
    import typer


def sfd(**options: Any) -> Any:
    """SFD: fine-tune the teacher so Euler steps on a coarse schedule match a finer teacher solver."""
    from .distiller import SFD

    return SFD(**options)


def sfd_model(*, path: str | None = None, **options: Any) -> Any:
    """An SFD-distilled student (JSON + safetensors written by diffsampler sfd train)."""
    from diffsampler.errors import OptionError

    from .student import load_student

    if path is None:
        raise OptionError("model 'sfd' needs a student file: --model student.json")
    return load_student(path, **options)


def loads_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an SFD student (``.json`` with format ``diffsampler.sfd/1`` or its weights)."""
    return is_student_file(path)


def sfd_schedule(**options: Any) -> Any:
    """The sigmas an SFD student was trained on, read from its file (option file)."""
    from .schedule import SFDScheduleFile

    return SFDScheduleFile(**options)


def sfd_solver(**options: Any) -> Any:
    """Euler with an SFD student in place of its teacher (option student=FILE): compare it beside solvers."""
    from .solver import SFDSolver

    return SFDSolver(**options)


sfd.paper = PAPER  # type: ignore[attr-defined]
sfd_solver.paper = PAPER  # type: ignore[attr-defined]
sfd_model.paper = PAPER  # type: ignore[attr-defined]
sfd_schedule.paper = PAPER  # type: ignore[attr-defined]
sfd_model.loads_file = loads_file  # type: ignore[attr-defined]
sfd_model.file_format = "an SFD student (.json written by diffsampler sfd train, weights beside it)"  # type: ignore[attr-defined]


@hookimpl
def register_distillers(register: Register) -> None:
    register("sfd", sfd, options=SFDOptions)


@hookimpl
def register_models(register: Register) -> None:
    register("sfd", sfd_model, options=SFDModelOptions)


@hookimpl
def register_solvers(register: Register) -> None:
    register("sfd", sfd_solver, options=SFDSolverOptions)


@hookimpl
def register_schedules(register: Register) -> None:
    register("sfd", sfd_schedule, options=SFDScheduleOptions)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from .cli import add_commands

    add_commands(app)
