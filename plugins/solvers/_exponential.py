"""Shared pieces of the exponential integrators in log-SNR time (DPM-Solver++, UniPC).

In EDM's parameterisation ``alpha = 1`` and ``lambda = -log sigma``. The model output used by a
step is either the data prediction ``x0 = D(x; sigma)`` (``predict_x0``) or the noise prediction
``eps = d = (x - D) / sigma``; with dynamic thresholding the data prediction is thresholded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffsampler import OptionError, Run, choice, option

from ._thresholding import dynamic_thresholding

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["check_thresholding", "model_output", "predict_x0_option", "thresholding_option"]


def predict_x0_option() -> Any:
    return option(
        True, help="use the data prediction D (DPM-Solver++) instead of the noise prediction"
    )


def thresholding_option() -> Any:
    return option(
        None,
        help="None, or 'dynamic': clamp each data prediction to its 99.5th |x0| percentile s "
        "(s >= 1) and divide by s (the seed always did; it stops convergence to the ODE "
        "solution when data lie outside [-1, 1])",
        validator=choice(None, "dynamic"),
    )


def check_thresholding(options: Any) -> None:
    """Thresholding acts on data predictions: refuse it with ``predict_x0=False``."""
    if options.thresholding is not None and not options.predict_x0:
        raise OptionError("thresholding needs predict_x0=True (it acts on data predictions)")


def model_output(run: Run, x: Tensor, sigma: float, options: Any) -> Tensor:
    """The model output at ``(x, sigma)`` in the solver's form (one NFE; AFS handled by ``run``)."""
    if not options.predict_x0:
        return run.derivative(x, sigma)  # eps = (x - D) / sigma
    x0 = run.denoise(x, sigma)
    return dynamic_thresholding(x0) if options.thresholding == "dynamic" else x0
