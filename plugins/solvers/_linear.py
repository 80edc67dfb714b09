"""Linear combinations of tensors with host-side (float64) coefficients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["combine"]


def combine(terms: Sequence[tuple[float, Tensor]]) -> Tensor:
    """``sum(c * t for c, t in terms)`` with one fused multiply-add per term.

    The coefficients are Python floats; torch rounds them to the tensors' dtype, so a run in
    float32 stays in float32 and nothing is synchronised with the device.
    """
    (c0, t0), *rest = [(c, t) for c, t in terms if c != 0.0] or [(0.0, terms[0][1])]
    if c0 == 1.0 and rest:  # x + c1 t1 in one pass, without scaling x
        (c1, t1), *rest = rest
        out = t0.add(t1, alpha=c1)
    else:
        out = t0 * c0
    for c, t in rest:
        out.add_(t, alpha=c)
    return out
