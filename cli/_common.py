"""Shared CLI helpers: consoles, ``key=value`` parsing, JSON output, and SIGTERM as an interrupt."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.console import Console

from diffsampler.options import parse_pairs

__all__ = ["StopRequest", "Terminated", "console", "err_console", "exit_status", "parse_pairs", "print_json",
           "sigterm_interrupts", "stop_between_steps", "table_console"]

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


class StopRequest:
    """The first SIGINT or SIGTERM received (``signum``), recorded by the handler of
    :func:`stop_between_steps`; a training loop asks :meth:`requested` between its steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_between_steps(show: bool, *, step: str = "iteration") -> Iterator[StopRequest]:
    """While inside, the first Ctrl-C (SIGINT) or SIGTERM only asks a training loop to stop
    after the current ``step``, where what it trained can be saved; a second one stops at once."""
    state = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # handlers need the main thread
        yield state
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if state.signum is not None:
            signal.default_int_handler(signum, frame)  # the second one: KeyboardInterrupt now
        state.signum = signum
        if show:  # os.write: safe inside a signal handler, unlike the console's print
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after this {step} "
                        "(Ctrl-C again to quit at once, losing it)\n".encode())

    # a SIGINT ignored at start (a background job of a shell script) stays ignored, as for sample
    signums = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
