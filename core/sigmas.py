"""Validation of noise-level sequences, shared by schedules and solvers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import OptionError, SamplingError

if TYPE_CHECKING:
    from torch import Tensor


def sigma_tuple(sigmas: Tensor | Sequence[float]) -> tuple[float, ...]:
    """``sigmas`` as host floats, checked: 1-D, at least two, finite, positive, decreasing.

    A tensor on an accelerator is copied to the host once, here, before the sampling loop.
    """
    values: Any = sigmas
    if hasattr(values, "detach"):
        if values.dim() != 1:
            raise SamplingError(f"sigmas must be 1-D, got shape {tuple(values.shape)}")
        values = values.detach().to("cpu").double().tolist()
    try:
        out = tuple(float(s) for s in values)
    except (TypeError, ValueError):
        raise SamplingError(f"sigmas must be a sequence of numbers, got {sigmas!r}") from None
    if len(out) < 2:
        raise SamplingError(f"need at least 2 sigmas (one step), got {len(out)}")
    for k, s in enumerate(out):
        if not math.isfinite(s) or s <= 0:
            raise SamplingError(f"sigmas must be finite and positive, got sigmas[{k}] = {s!r}")
    for k in range(len(out) - 1):
        if not out[k + 1] < out[k]:
            raise SamplingError(
                f"sigmas must be strictly decreasing, got sigmas[{k}] = {out[k]!r} "
                f"then sigmas[{k + 1}] = {out[k + 1]!r}"
            )
    return out


def check_range(num_steps: int, sigma_min: float, sigma_max: float) -> None:
    """The arguments every schedule takes: at least two points and ``0 < sigma_min < sigma_max``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise OptionError(f"num_steps must be an integer >= 2 (one step), got {num_steps!r}")
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)):
        raise OptionError(f"sigma_min and sigma_max must be finite, got {sigma_min}, {sigma_max}")
    if not 0 < sigma_min < sigma_max:
        raise OptionError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def parse_sigma_list(text: str) -> tuple[float, ...]:
    """Parse ``"80,10,1,0.1,0.002"`` (CLI ``--sigmas``) into a checked tuple."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise OptionError(
            f"--sigmas expects comma-separated numbers like 80,10,1,0.1,0.002, got {text!r}"
        ) from None
    try:
        return sigma_tuple(values)
    except SamplingError as exc:
        raise OptionError(f"--sigmas: {exc}") from None
