"""Shared CLI helpers: consoles, ``key=value`` parsing, and JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from diffsampler.options import parse_pairs

__all__ = ["console", "err_console", "parse_pairs", "print_json", "table_console"]

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table_console() -> Console:
    """The stdout console, or a wide one when stdout is a pipe or file (no wrapped tables)."""
    return console if console.is_terminal else Console(width=200)
