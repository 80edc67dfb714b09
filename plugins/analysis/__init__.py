"""Trajectory analysis: the seed's diff-analyzer as functions and plots (entry point ``analysis``).

``diffsampler analyze deviation | denoising | pca | curvature`` (see :mod:`.cli`); the geometry
is in :mod:`.geometry`, the analyses in :mod:`.kinds` (registered by name in :mod:`.registry`).

This module imports no torch: ``diffsampler list`` loads every plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffsampler import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from .cli import add_commands

    add_commands(app)
