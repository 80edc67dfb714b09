"""Dynamic thresholding of data predictions (Saharia et al. 2022, Imagen, Sec. 2.3)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DYNAMIC_PERCENTILE", "dynamic_thresholding"]

DYNAMIC_PERCENTILE = 0.995


def dynamic_thresholding(x0: Tensor, percentile: float = DYNAMIC_PERCENTILE) -> Tensor:
    """Per sample: ``s = max(quantile(|x0|, p), 1)``, then ``clamp(x0, -s, s) / s``.

    The quantile is ``torch.quantile``'s linear interpolation between order statistics, taken
    with ``topk`` (no size limit, and only the largest values are sorted); the interpolation
    position is known on the host, so nothing is synchronised with the device.
    """
    flat = x0.reshape(x0.shape[0], -1).abs()
    n = flat.shape[1]
    position = percentile * (n - 1)
    low = math.floor(position)
    high = min(low + 1, n - 1)
    frac = position - low
    largest = flat.topk(n - low, dim=1, largest=True, sorted=True).values  # descending
    below = largest[:, n - 1 - low]  # the low-th smallest value
    above = largest[:, n - 1 - high]
    s = (below + frac * (above - below)).clamp_min(1.0)
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return x0.clamp(-s, s) / s
