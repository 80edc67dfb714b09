"""Option validators shared by the built-in solvers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffsampler import OptionError

__all__ = ["integer_in_range"]


def integer_in_range(low: int, high: int) -> Callable[[Any, Any, Any], None]:
    """Validator: an integer ``low <= value <= high`` (booleans and floats are refused)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"option {attribute.name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise OptionError(f"option {attribute.name} must be in {low}..{high}, got {value!r}")

    return check
