"""Every solver against the exact ODE solution of an analytic Gaussian mixture.

Ground truth: the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` of a Gaussian
mixture (exact ``D``), solved by scipy's DOP853 at rtol = atol = 1e-12 in ``v = log sigma``
(``dx/dv = x - D``, a smooth right-hand side). The error of a solver of global order ``p``
falls like ``steps^-p``; the tests fit the log-log slope.

What is true for the multistep methods (and tested as such):

* They start at lower order (step ``i`` uses ``i + 1`` points). A first-order start step has
  local error ``O(h^2)`` and is taken once, so asymptotically the global order is 2 whatever
  ``max_order``. The kernel's own order shows where that start is nearly exact: started at
  ``sigma = 1000``, where the trajectory is a straight line to ~1e-6, the error over 64..512
  steps falls at the kernel's order (``test_kernel_order``).
* ``ipndm`` applies the equal-step weights to unequal steps: globally second order on any
  smoothly varying schedule (``test_global_order_is_two``).
* ``lower_order_final`` makes the last step first order: globally second order.
* DPM-Solver++(3M) as in the seed and the official DPM-Solver code weights its second
  difference ``D2 ~ h^2 D''/2`` with ``phi_3`` where the Taylor term needs ``h^2 D''``: its
  step is exact for linear, not quadratic, data predictions, so it is second order (with a
  smaller constant than 2M); see docs/solvers.md.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import diffsampler as ds
from diffsampler.plugins.models.gmm import gmm

MODEL = gmm(shape=(2,), components=3, spread=0.3, seed=0)


def exact_endpoint(x: torch.Tensor, sigma_max: float, sigma_min: float) -> torch.Tensor:
    """The exact ODE solution at ``sigma_min`` from ``x`` at ``sigma_max`` (float64)."""
    shape = x.shape

    def rhs(v: float, y: np.ndarray) -> np.ndarray:
        state = torch.from_numpy(y.reshape(shape))
        sigma = torch.full((shape[0],), float(np.exp(v)), dtype=torch.float64)
        return (state - MODEL(state, sigma)).numpy().ravel()

    sol = solve_ivp(
        rhs, (np.log(sigma_max), np.log(sigma_min)), x.double().numpy().ravel(),
        method="DOP853", rtol=1e-12, atol=1e-12,
    )
    assert sol.success
    return torch.from_numpy(sol.y[:, -1].reshape(shape))


def start(sigma_max: float, batch: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *MODEL.shape, generator=g, dtype=torch.float64) * sigma_max


@cache
def reference(sigma_max: float, sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = start(sigma_max)
    return x, exact_endpoint(x, sigma_max, sigma_min)


def errors(name: str, options: dict, steps: list[int], sigma_max: float, sigma_min: float,
           schedule: str = "logsnr", schedule_options: dict | None = None) -> np.ndarray:
    x, truth = reference(sigma_max, sigma_min)
    solver = ds.get_solver(name, **options)
    sched = ds.get_schedule(schedule, **(schedule_options or {}))
    out = []
    for n in steps:
        sigmas = sched.sigmas(n + 1, sigma_min, sigma_max)
        out.append(float((solver.sample(MODEL, x, sigmas).x - truth).abs().max()))
    return np.array(out)


def fitted_order(steps: list[int], errs: np.ndarray) -> float:
    return float(-np.polyfit(np.log(steps), np.log(errs), 1)[0])


def test_ground_truth_is_converged():
    """The reference itself: two tolerances agree far below the errors measured here."""
    x = start(10.0, batch=4)
    shape = x.shape

    def rhs(v, y):
        state = torch.from_numpy(y.reshape(shape))
        return (state - MODEL(state, torch.full((4,), float(np.exp(v)), dtype=torch.float64))).numpy().ravel()

    loose = solve_ivp(rhs, (np.log(10.0), np.log(0.1)), x.numpy().ravel(), method="DOP853",
                      rtol=1e-9, atol=1e-9).y[:, -1]
    tight = exact_endpoint(x, 10.0, 0.1).numpy().ravel()
    assert np.abs(loose - tight).max() < 1e-8


ONE_STEP = [
    ("euler", {}, 1),
    ("heun", {}, 2),
    ("dpm", {}, 2),
    ("dpm", {"r": 0.3}, 2),
    ("dpm", {"r": 1.0}, 2),
]


@pytest.mark.parametrize(("name", "options", "order"), ONE_STEP)
@pytest.mark.parametrize(("schedule", "schedule_options"), [("logsnr", {}), ("polynomial", {"rho": 7.0})])
def test_one_step_methods_converge_at_their_order(name, options, order, schedule, schedule_options):
    steps = [16, 32, 64, 128]
    errs = errors(name, options, steps, 10.0, 0.1, schedule, schedule_options)
    assert order - 0.1 < fitted_order(steps, errs) < order + 0.35
    assert errs[-1] < 0.05 ** order  # converges, not merely at a rate


GLOBAL_ORDER_TWO = [
    ("ipndm", {"max_order": 2}),
    ("ipndm", {"max_order": 3}),
    ("ipndm", {"max_order": 4}),
    ("dpmpp", {"max_order": 2}),
    ("dpmpp", {"max_order": 3}),
    ("dpmpp", {"max_order": 3, "lower_order_final": False}),
    ("dpmpp", {"max_order": 3, "predict_x0": False}),
    ("unipc", {"max_order": 2}),
    ("unipc", {"max_order": 3}),
    ("unipc", {"max_order": 3, "variant": "bh1", "predict_x0": False}),
]


@pytest.mark.parametrize(("name", "options"), GLOBAL_ORDER_TWO)
def test_global_order_is_two(name, options):
    """Fixed weights on unequal steps, a first-order last step (``lower_order_final``), or the
    3M step: second order, measured on the fine end (64..256 steps, 10 -> 0.1)."""
    steps = [64, 128, 256]
    errs = errors(name, options, steps, 10.0, 0.1)
    assert 1.85 < fitted_order(steps, errs) < 2.2


FIRST_ORDER = [
    ("ipndm", {"max_order": 1}),
    ("ipndm_v", {"max_order": 1}),
    ("deis", {"max_order": 1}),
    ("deis", {"max_order": 1, "deis_mode": "rhoab"}),
    ("dpmpp", {"max_order": 1}),
    ("dpmpp", {"max_order": 1, "predict_x0": False}),
]


@pytest.mark.parametrize(("name", "options"), FIRST_ORDER)
def test_max_order_one_is_a_first_order_method(name, options):
    steps = [32, 64, 128]
    errs = errors(name, options, steps, 10.0, 0.1)
    assert 0.9 < fitted_order(steps, errs) < 1.15


KERNELS = [
    ("ipndm_v", {"max_order": 2}, 2),
    ("ipndm_v", {"max_order": 3}, 3),
    ("ipndm_v", {"max_order": 4}, 4),
    ("deis", {"max_order": 2}, 2),
    ("deis", {"max_order": 3}, 3),
    ("deis", {"max_order": 4}, 4),
    ("deis", {"max_order": 3, "deis_mode": "rhoab"}, 3),
    ("deis", {"max_order": 4, "deis_mode": "rhoab"}, 4),
    ("dpmpp", {"max_order": 2, "lower_order_final": False}, 2),
    ("dpmpp", {"max_order": 3, "lower_order_final": False}, 2),  # the 3M step: see module doc
    # UniPC-p: predictor of order p, corrector of order p + 1 (Zhao et al. 2023, Thm. 3.1)
    ("unipc", {"max_order": 1, "lower_order_final": False}, 2),
    ("unipc", {"max_order": 2, "lower_order_final": False}, 3),
    ("unipc", {"max_order": 3, "lower_order_final": False}, 4),
    ("unipc", {"max_order": 3, "lower_order_final": False, "predict_x0": False}, 4),
]


@pytest.mark.parametrize(("name", "options", "order"), KERNELS)
def test_kernel_order(name, options, order):
    """Started at sigma = 1000 (a nearly straight trajectory, so the low-order start steps are
    nearly exact), the error falls at the order of the multistep kernel."""
    steps = [64, 128, 256, 512]
    errs = errors(name, options, steps, 1000.0, 0.1)
    assert order - 0.4 < fitted_order(steps, errs) < order + 0.4


def test_ipndm_v_beats_the_fixed_weights_on_a_nonuniform_schedule():
    fixed = errors("ipndm", {}, [256], 1000.0, 0.1)
    exact = errors("ipndm_v", {}, [256], 1000.0, 0.1)
    assert exact[0] < fixed[0] / 5


ALL = [
    ("euler", {}), ("heun", {}), ("dpm", {}), ("dpmpp", {}), ("unipc", {}),
    ("unipc", {"predict_x0": False}), ("deis", {}), ("deis", {"deis_mode": "rhoab"}),
    ("ipndm", {}), ("ipndm_v", {}),
]


@pytest.mark.parametrize(("name", "options"), ALL)
def test_float32_and_float64_agree(name, options):
    solver = ds.get_solver(name, **options)
    sigmas = ds.get_schedule("polynomial").sigmas(12, 0.05, 20.0)
    x = start(20.0)
    out64 = solver.sample(MODEL, x, sigmas).x
    out32 = solver.sample(MODEL, x.float(), sigmas).x
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert torch.allclose(out32.double(), out64, rtol=0, atol=2e-5 * float(out64.abs().max()))


def test_dynamic_thresholding_stops_convergence_outside_unit_range():
    """With data outside [-1, 1] (means at +-3) the seed's always-on thresholding converges to
    something else; our default (no thresholding) converges to the ODE solution."""
    from diffsampler.plugins.models.gmm import GaussianMixture

    wide = GaussianMixture(np.array([[3.0, -3.0], [-3.0, 2.0]]), np.array([0.3, 0.4]),
                           np.array([0.5, 0.5]))
    x = start(10.0)
    shape = x.shape

    def rhs(v, y):
        state = torch.from_numpy(y.reshape(shape))
        sig = torch.full((shape[0],), float(np.exp(v)), dtype=torch.float64)
        return (state - wide(state, sig)).numpy().ravel()

    truth = solve_ivp(rhs, (np.log(10.0), np.log(0.1)), x.numpy().ravel(), method="DOP853",
                      rtol=1e-12, atol=1e-12).y[:, -1].reshape(shape)
    sigmas = ds.get_schedule("logsnr").sigmas(201, 0.1, 10.0)
    for name in ("dpmpp", "unipc"):
        plain = ds.get_solver(name).sample(wide, x, sigmas).x.numpy()
        thresholded = ds.get_solver(name, thresholding="dynamic").sample(wide, x, sigmas).x.numpy()
        assert np.abs(plain - truth).max() < 1e-3
        assert np.abs(thresholded - truth).max() > 0.5
