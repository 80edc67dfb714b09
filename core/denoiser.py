"""A small base for Denoiser implementations: the shape and the noise range, checked once."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import OptionError

__all__ = ["DenoiserBase"]


class DenoiserBase:
    """Gives a model the :class:`~diffsampler.Denoiser` facts; subclasses write ``__call__``.

    Call :meth:`_init_denoiser` from ``__init__``; it refuses an empty shape or a range that
    is not ``0 < sigma_min < sigma_max``.
    """

    _shape: tuple[int, ...]
    _sigma_min: float
    _sigma_max: float

    def _init_denoiser(self, shape: Sequence[int], sigma_min: float, sigma_max: float) -> None:
        self._shape = tuple(int(s) for s in shape)
        if not self._shape or any(s < 1 for s in self._shape):
            raise OptionError(f"a sample shape needs positive sizes, got {tuple(shape)}")
        self._sigma_min, self._sigma_max = float(sigma_min), float(sigma_max)
        if not 0 < self._sigma_min < self._sigma_max:
            raise OptionError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def sigma_min(self) -> float:
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        return self._sigma_max
