"""JSON for files people read: indented objects, lists of numbers or strings on one line (a
50,000-seed run's ``config.json`` stays a page long instead of 50,000 lines)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps"]

_MARK = "\x00inline:"


def dumps(data: Any) -> str:
    """``json.dumps(data, indent=2)``, except that lists holding no list or object are written
    on one line. Parses back to the same value."""
    inline: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            if any(isinstance(v, dict | list | tuple) for v in value):
                return [mark(v) for v in value]
            inline.append(json.dumps(list(value)))
            return f"{_MARK}{len(inline) - 1}"
        return value

    text = json.dumps(mark(data), indent=2)
    for index in range(len(inline) - 1, -1, -1):  # from the last: "…:1" is not inside "…:10"
        text = text.replace(json.dumps(f"{_MARK}{index}"), inline[index])
    return text
