"""AMED-Solver and AMED-Plugin: learned intermediate steps (entry point ``amed``).

Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (CVPR 2024,
arXiv:2312.00094): a tiny predictor reads the network's bottleneck features and the two times of
a step and chooses the intermediate time ``t_mid = t_next^r t_cur^(1-r)`` (and optional scales).

Registers the distiller ``amed`` (training), the solvers ``amed`` (AMED-Solver) and
``amed-euler``, ``amed-ipndm``, ``amed-dpm``, ``amed-dpmpp`` (AMED-Plugin), each with option
``predictor=FILE``, and the command ``diffsampler amed train``. This module imports no torch:
the factories import the implementation when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .options import AMEDOptions, AMEDSolverOptions

if TYPE_CHECKING:
    import typer

PAPER = (
    "Zhou et al. 2024, Fast ODE-based Sampling for Diffusion Models in Around 5 Steps "
    "(AMED), CVPR 2024, arXiv:2312.00094"
)
STUDENTS = ("euler", "ipndm", "dpm", "dpmpp")


def amed(**options: Any) -> Any:
    """AMED: train the intermediate-time predictor of AMED-Solver / AMED-Plugin against a teacher."""
    from .train import AMED

    return AMED(**options)


def _solver_factory(student: str) -> Any:
    def factory(**options: Any) -> Any:
        from .solver import solver_class

        return solver_class(student)(**options)

    if student == "amed":
        factory.__doc__ = "AMED-Solver: learned midpoint, 2 NFE per step (option predictor=FILE)"
    else:
        factory.__doc__ = (
            f"AMED-Plugin on {student}: learned intermediate step, 2 NFE per step "
            "(option predictor=FILE)"
        )
    factory.paper = PAPER  # type: ignore[attr-defined]
    return factory


amed.paper = PAPER  # type: ignore[attr-defined]


@hookimpl
def register_distillers(register: Register) -> None:
    register("amed", amed, options=AMEDOptions)


@hookimpl
def register_solvers(register: Register) -> None:
    register("amed", _solver_factory("amed"), options=AMEDSolverOptions)
    for student in STUDENTS:
        register(f"amed-{student}", _solver_factory(student), options=AMEDSolverOptions)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from .cli import add_commands

    add_commands(app)
