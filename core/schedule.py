"""Base class of time schedules: compute ``num_steps`` noise levels in float64 on the host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import OptionError, SamplingError
from .options import build_options
from .protocols import Denoiser
from .sigmas import check_range, sigma_tuple

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ScheduleBase", "SigmaList"]


class ScheduleBase:
    """Subclass, set ``Options`` and ``paper``, implement :meth:`compute` (float64 numpy).

    :meth:`sigmas` checks the arguments, calls :meth:`compute`, checks the result (decreasing,
    positive, ends at the requested range) and returns a float64 CPU tensor.
    """

    Options: ClassVar[type | None] = None
    paper: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        owner = f"schedule {type(self).__name__}"
        if self.Options is None and options:
            raise OptionError(f"{owner} takes no options, got {', '.join(options)}")
        self.options: Any = build_options(self.Options, options, owner=owner)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})" if self.options else f"{type(self).__name__}()"

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        raise NotImplementedError

    def sigmas(
        self,
        num_steps: int,
        sigma_min: float,
        sigma_max: float,
        denoiser: Denoiser | None = None,
    ) -> Tensor:
        import torch

        check_range(num_steps, float(sigma_min), float(sigma_max))
        values = np.asarray(
            self.compute(num_steps, float(sigma_min), float(sigma_max), denoiser), dtype=np.float64
        )
        if values.shape != (num_steps,):
            raise SamplingError(
                f"{type(self).__name__} produced {values.shape} sigmas, expected ({num_steps},)"
            )
        sigma_tuple(values.tolist())  # decreasing, positive, finite
        return torch.from_numpy(values.copy())


class SigmaList:
    """A user-given decreasing list of noise levels, used as a schedule."""

    def __init__(self, values: Sequence[float] | Tensor) -> None:
        self.values = sigma_tuple(values)

    def __repr__(self) -> str:
        return f"SigmaList({list(self.values)})"

    def sigmas(
        self,
        num_steps: int,
        sigma_min: float = 0.0,
        sigma_max: float = 0.0,
        denoiser: Denoiser | None = None,
    ) -> Tensor:
        import torch

        if num_steps != len(self.values):
            raise OptionError(
                f"the given sigma list has {len(self.values)} points, but {num_steps} were asked for"
            )
        return torch.tensor(self.values, dtype=torch.float64)
