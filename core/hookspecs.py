"""The hooks a diffsampler plugin implements (pluggy, project name ``diffsampler``).

A plugin is any importable object (usually a module) exposed under the entry-point group
``diffsampler`` whose functions are marked with :data:`hookimpl`. Each ``register_*`` hook
receives a ``register`` callback and calls it once per component::

    import diffsampler as ds

    @ds.hookimpl
    def register_solvers(register):
        register("my-solver", MySolver, summary="...", options=MySolver.Options)

``factory(**options)`` must return the component; ``options`` is its attrs options class (the
CLI builds flags and ``diffsampler info`` its table from it). A hook should not import heavy
modules (torch) at module level: ``diffsampler list`` loads every plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import typer

PROJECT = "diffsampler"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback each ``register_*`` hook receives."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        summary: str | None = None,
        options: type | None = None,
    ) -> None: ...


@hookspec
def register_solvers(register: Register) -> None:
    """Register ODE solvers (objects implementing :class:`diffsampler.Solver`)."""


@hookspec
def register_schedules(register: Register) -> None:
    """Register time schedules (objects implementing :class:`diffsampler.Schedule`)."""


@hookspec
def register_models(register: Register) -> None:
    """Register models: ``factory(**options)`` returns a :class:`diffsampler.Denoiser`."""


@hookspec
def register_distillers(register: Register) -> None:
    """Register distillers (GITS, AMED, SFD, ...): objects implementing :class:`diffsampler.Distiller`."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics (objects implementing :class:`diffsampler.Metric`)."""


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add CLI commands or sub-apps to the ``diffsampler`` Typer app (``app.add_typer``)."""
