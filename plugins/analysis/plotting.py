"""Matplotlib helpers for paper-ready figures (the ``[plot]`` extra, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffsampler.errors import MissingExtraError

__all__ = ["band", "pyplot", "save_figure", "sigma_axis"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or :class:`MissingExtraError` naming ``[plot]``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("matplotlib", "plot", "diffsampler analyze --plot (the default)") from exc
    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "mathtext.fontset": "cm", "axes.spines.top": False, "axes.spines.right": False,
    })
    return plt


def band(ax: Any, x: np.ndarray, values: np.ndarray, *, label: str, color: str,
         marker: str = "o", per_seed: bool = True) -> None:
    """Mean over seeds (``values`` is ``[points, seeds]``, non-negative) with a +-1 std band
    (kept above zero) and thin lines for the first 32 seeds."""
    values = np.asarray(values, dtype=np.float64)
    mean, std = values.mean(1), values.std(1)
    if per_seed:
        for k in range(min(values.shape[1], 32)):
            ax.plot(x, values[:, k], color=color, alpha=0.12, lw=0.6)
    # the quantities are non-negative: keep the band above zero (and visible on a log axis)
    lower = np.where(mean - std > 0, mean - std, mean / 3)
    ax.fill_between(x, lower, mean + std, color=color, alpha=0.2, lw=0)
    ax.plot(x, mean, color=color, marker=marker, ms=3, lw=1.4, label=label)


def sigma_axis(ax: Any) -> None:
    """Noise level on a log axis, decreasing from left to right (sampling order)."""
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(r"noise level $\sigma$ (sampling runs left to right)")
    ax.grid(alpha=0.3, which="major")


def save_figure(fig: Any, stem: Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` atomically; returns both paths."""
    import matplotlib.pyplot as plt

    written = []
    for suffix, kwargs in ((".png", {"dpi": 150}), (".pdf", {})):
        path = stem.with_suffix(suffix)
        tmp = path.with_name(f".{path.name}.tmp{suffix}")
        fig.savefig(tmp, bbox_inches="tight", **kwargs)
        tmp.replace(path)
        written.append(path)
    plt.close(fig)
    return written
