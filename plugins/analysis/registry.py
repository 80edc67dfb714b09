"""The analyses, by name: a small registry inside the plugin (no if/elif over names).

An analysis is a class with ``name``, ``summary``, an attrs ``Options`` class, and two methods:
``compute(setup, options) -> AnalysisResult`` (numbers only) and ``plot(result, plt)`` (one
matplotlib figure). :func:`register_analysis` adds one; ``diffsampler analyze`` gets one
sub-command per registered name. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import attrs
import numpy as np

from diffsampler.errors import OptionError

__all__ = ["ANALYSES", "Analysis", "AnalysisResult", "get_analysis", "register_analysis"]


@attrs.frozen(kw_only=True)
class AnalysisResult:
    """What an analysis computed.

    ``table``: per-step columns of equal length (the CSV); ``summary``: headline numbers;
    ``arrays``: per-seed data behind the plot. All three go into the JSON file.
    """

    kind: str
    table: dict[str, np.ndarray]
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        lengths = {len(v) for v in self.table.values()}
        if len(lengths) > 1:
            raise ValueError(f"table columns of {self.kind!r} differ in length: {sorted(lengths)}")


class Analysis(Protocol):
    """One kind of analysis (see the module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type]

    def compute(self, setup: Any, options: Any) -> AnalysisResult: ...

    def plot(self, result: AnalysisResult, plt: Any) -> Any: ...


ANALYSES: dict[str, type[Analysis]] = {}


def register_analysis(cls: type[Any]) -> type[Any]:
    """Class decorator: register ``cls`` under ``cls.name`` (a second class of that name is an error)."""
    name = cls.name
    if name in ANALYSES and ANALYSES[name] is not cls:
        raise ValueError(f"analysis {name!r} is registered twice")
    ANALYSES[name] = cls
    return cls


def _load_builtin() -> None:
    from . import kinds  # noqa: F401  (registers the built-in analyses)


def analysis_names() -> list[str]:
    """The registered analysis names, built-in ones loaded."""
    _load_builtin()
    return list(ANALYSES)


def get_analysis(name: str) -> Analysis:
    """A new instance of the analysis ``name``, or :class:`OptionError` naming the known ones."""
    _load_builtin()
    try:
        return ANALYSES[name]()
    except KeyError:
        raise OptionError(
            f"unknown analysis {name!r}; known: {', '.join(ANALYSES)}"
        ) from None
