"""Shared CLI helpers: consoles, ``key=value`` parsing, JSON output, and SIGTERM as an interrupt."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.console import Console

from diffsampler.options import parse_pairs

__all__ = ["Terminated", "console", "err_console", "exit_status", "parse_pairs", "print_json", "sigterm_interrupts",
           "table_console"]

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table_console() -> Console:
    """The stdout console, or a wide one when stdout is a pipe or file (no wrapped tables)."""
    return console if console.is_terminal else Console(width=200)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: the same clean stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process stopped by it (130 for Ctrl-C)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` inside the block (Typer turns Ctrl-C's
    KeyboardInterrupt into a silent exit before ``main()`` could report it)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be put back
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
