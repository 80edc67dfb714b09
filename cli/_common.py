"""Shared CLI helpers: consoles, ``key=value`` parsing, and JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from diffsampler.errors import OptionError

console = Console()
err_console = Console(stderr=True)


def parse_pairs(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` from repeated ``--opt`` flags into a dict of strings."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{flag} expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table_console() -> Console:
    """The stdout console, or a wide one when stdout is a pipe or file (no wrapped tables)."""
    return console if console.is_terminal else Console(width=200)
