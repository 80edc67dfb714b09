"""Run one analysis end to end: compute it and write its plot (PNG, PDF) and numbers (CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from diffsampler import __version__
from diffsampler.errors import MissingExtraError, OptionError
from diffsampler.options import build_options, options_as_dict
from diffsampler.outputs import atomic_write_bytes

from .collect import Setup
from .plotting import pyplot, save_figure
from .registry import AnalysisResult, get_analysis

__all__ = ["analyze", "plot_available", "prepare_output", "write_result"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def analyze(kind: str, setup: Setup, options: dict[str, Any] | None = None) -> tuple[AnalysisResult, Any]:
    """Compute analysis ``kind`` on ``setup``; ``options`` are its options (strings allowed)."""
    analysis = get_analysis(kind)
    opts = build_options(analysis.Options, dict(options or {}), owner=f"analysis {kind!r}")
    return analysis.compute(setup, opts), opts


def prepare_output(out: Path) -> None:
    """Create ``out`` (and parents), or :class:`OptionError` saying why it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot write to output directory {str(out)!r}: {exc.strerror}") from None


def write_result(
    out: Path, result: AnalysisResult, *, config: dict[str, Any], options: Any, plot: bool = True
) -> list[Path]:
    """Write ``KIND.csv``, ``KIND.json`` and (``plot``) ``KIND.png`` and ``KIND.pdf`` in ``out``."""
    prepare_output(out)
    stem = out / result.kind
    buf = io.StringIO()
    writer = csv.writer(buf)
    columns = list(result.table)
    writer.writerow(columns)
    for row in zip(*(result.table[c] for c in columns), strict=True):
        writer.writerow([f"{float(v):.8g}" for v in row])
    atomic_write_bytes(stem.with_suffix(".csv"), buf.getvalue().encode())
    data = {
        "diffsampler": __version__,
        "analysis": result.kind,
        "options": options_as_dict(options),
        "config": config,
        "summary": result.summary,
        "table": result.table,
        "per_seed": {k: v for k, v in result.arrays.items() if not k.startswith("_")},
    }
    text = json.dumps(_jsonable(data), indent=1) + "\n"
    atomic_write_bytes(stem.with_suffix(".json"), text.encode())
    written = [stem.with_suffix(".csv"), stem.with_suffix(".json")]
    if plot:
        plt = pyplot()
        fig = get_analysis(result.kind).plot(result, plt)
        written += save_figure(fig, stem)
    return written


def plot_available() -> bool:
    """Whether the ``[plot]`` extra is installed."""
    try:
        pyplot()
    except MissingExtraError:
        return False
    return True
