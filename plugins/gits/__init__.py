"""GITS: geometry-inspired time scheduling (entry point ``gits``).

Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling" (ICML 2024,
arXiv:2405.11326): a better time schedule for a given model, chosen by dynamic programming
among the points of a fine teacher grid from a few hundred teacher trajectories.

Registers the distiller ``gits`` (the search), the schedule ``gits`` (a searched schedule file,
``--schedule-opt file=FILE``) and the command ``diffsampler gits search``. This module imports
no torch: the factories import the implementation when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .options import GITSOptions, GITSScheduleOptions

if TYPE_CHECKING:
    import typer

PAPER = (
    "Chen et al. 2024, On the Trajectory Regularity of ODE-based Diffusion Sampling, "
    "ICML 2024, arXiv:2405.11326"
)


def gits(**options: Any) -> Any:
    """GITS: search a time schedule for any model and solver by DP over teacher trajectories."""
    from .search import GITS

    return GITS(**options)


def gits_schedule(**options: Any) -> Any:
    """A schedule searched by GITS, read from its JSON file (option file)."""
    from .artifact import GITSScheduleFile

    return GITSScheduleFile(**options)


gits.paper = PAPER  # type: ignore[attr-defined]
gits_schedule.paper = PAPER  # type: ignore[attr-defined]


@hookimpl
def register_distillers(register: Register) -> None:
    register("gits", gits, options=GITSOptions)


@hookimpl
def register_schedules(register: Register) -> None:
    register("gits", gits_schedule, options=GITSScheduleOptions)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from .cli import add_commands

    add_commands(app)
