"""The ``diffsampler`` command line (Typer + rich).

User errors (:class:`diffsampler.DiffSamplerError`) print one line and exit with status 2,
never a traceback. Plugins add commands through the ``register_commands(app)`` hook.
"""

from __future__ import annotations

import signal
import warnings
from typing import Annotated, TextIO

import typer
from rich.markup import escape

from diffsampler import __version__
from diffsampler.errors import DiffSamplerError
from diffsampler.registry import get_registry

from ._common import err_console, exit_status, sigterm_interrupts
from .bench_cmd import bench
from .compare_cmd import compare
from .info_cmd import info
from .list_cmd import list_components
from .sample_cmd import sample

__all__ = ["app", "build_app", "main"]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffsampler {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """The Typer app with the built-in commands and every plugin's commands."""
    app = typer.Typer(
        name="diffsampler",
        help="Fast sampling of diffusion models: solvers, schedules, learned methods, metrics.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        version: Annotated[
            bool,
            typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
        ] = False,
    ) -> None:
        """diffsampler: fast sampling of diffusion models."""

    app.command("list")(list_components)
    app.command("info")(info)
    app.command("sample")(sample)
    app.command("compare")(compare)
    app.command("bench")(bench)
    get_registry().register_commands(app)
    return app


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings as one ``warning:`` line on stderr, like errors (not Python's source-line format)."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    err_console.print(f"[bold yellow]warning:[/] {escape(str(message))}{kind}", highlight=False, soft_wrap=True)


def _unreported_interrupt(stop: SystemExit) -> KeyboardInterrupt | None:
    """The Ctrl-C / SIGTERM that ended a command which did not report it itself: Typer turns it
    into ``Exit(130) from`` the interrupt; commands that report their own exit ``from None``."""
    cause = getattr(stop.__context__, "__cause__", None)
    return cause if isinstance(cause, KeyboardInterrupt) else None


def main() -> None:
    """Entry point of the ``diffsampler`` script."""
    warnings.showwarning = _show_warning
    try:
        with sigterm_interrupts():  # SIGTERM stops a command as Ctrl-C does (its own handling, if any)
            app = build_app()
            app()
    except DiffSamplerError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt as stop:  # outside a command
        err_console.print("[bold red]interrupted[/]")
        raise SystemExit(exit_status(stop)) from None
    except SystemExit as stop:
        interrupt = _unreported_interrupt(stop)
        if interrupt is None:
            raise
        name = signal.Signals(getattr(interrupt, "signum", signal.SIGINT)).name
        err_console.print(f"[bold red]interrupted[/] ({name}) before the command finished: its output is not complete")
        raise SystemExit(exit_status(interrupt)) from None
