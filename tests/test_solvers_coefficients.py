"""The host-side coefficients, checked against exact integrals and independent quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

import diffsampler as ds
from diffsampler.plugins.solvers._adams import adams_bashforth_weights

RNG = np.random.default_rng(7)
CLASSICAL_AB = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


def random_grid(k: int) -> tuple[list[float], float, float]:
    """``k`` decreasing nodes ``s_n > s_{n-1}...`` reversed in time (as sigmas) with step ratios
    between 1/3 and 3, and the next point."""
    steps = RNG.uniform(0.2, 1.8, size=k)
    points = 10.0 - np.concatenate([[0.0], np.cumsum(steps)])  # s_{n-k+1}, ..., s_n, s_{n+1}
    nodes = list(points[k - 1::-1])  # s_n first
    return [float(v) for v in nodes], float(points[k - 1]), float(points[k])


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_adams_bashforth_weights_integrate_polynomials_below_order_exactly(k):
    for _ in range(20):
        nodes, a, b = random_grid(k)
        w = np.array(adams_bashforth_weights(nodes, a, b))
        centre = 9.0
        for degree in range(k + 1):
            values = np.array([(s - centre) ** degree for s in nodes])
            exact = ((b - centre) ** (degree + 1) - (a - centre) ** (degree + 1)) / (degree + 1)
            if degree < k:
                assert w @ values == pytest.approx(exact, rel=1e-12, abs=1e-12)
            else:  # and no more: the order is exactly k
                assert abs(w @ values - exact) > 1e-6 * abs(exact)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_adams_bashforth_weights_are_the_classical_ones_on_a_uniform_grid(k):
    h = -0.37
    nodes = [5.0 - j * h for j in range(k)]
    w = adams_bashforth_weights(nodes, 5.0, 5.0 + h)
    assert np.allclose(np.array(w) / h, CLASSICAL_AB[k], rtol=0, atol=1e-14)


def nonuniform_sigmas() -> tuple[float, ...]:
    return tuple(ds.get_schedule("polynomial", rho=7.0).sigmas(9, 0.002, 80.0).tolist())


@pytest.mark.parametrize("name", ["ipndm_v", "deis-rhoab"])
@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
def test_variable_step_solvers_use_exact_adams_weights(name, max_order):
    solver = (ds.get_solver("deis", deis_mode="rhoab", max_order=max_order) if name == "deis-rhoab"
              else ds.get_solver(name, max_order=max_order))
    sigmas = nonuniform_sigmas()
    for i, step in enumerate(solver.prepare(sigmas)):
        weights = step.weights
        assert step.residual_weights == pytest.approx([w / sigmas[i - j] for j, w in enumerate(weights)], rel=1e-15)
        k = min(max_order, i + 1)
        assert len(weights) == k
        nodes = [sigmas[i - j] for j in range(k)]
        a, b = sigmas[i], sigmas[i + 1]
        scale = abs(b - a) * max(abs(a), 1.0) ** (k - 1)
        for degree in range(k):
            values = np.array([(s - a) ** degree for s in nodes])
            exact = (b - a) ** (degree + 1) / (degree + 1)
            assert abs(np.array(weights) @ values - exact) <= 1e-12 * scale


def test_ipndm_and_ipndm_v_agree_on_a_uniform_grid_and_differ_otherwise():
    uniform = tuple(np.linspace(10.0, 1.0, 12).tolist())
    fixed = ds.get_solver("ipndm").prepare(uniform)
    exact = ds.get_solver("ipndm_v").prepare(uniform)
    for f, e in zip(fixed, exact, strict=True):
        assert np.allclose(f.weights, e.weights, rtol=1e-13, atol=1e-14)
    fixed = ds.get_solver("ipndm").prepare(nonuniform_sigmas())
    exact = ds.get_solver("ipndm_v").prepare(nonuniform_sigmas())
    assert not np.allclose(fixed[5].weights, exact[5].weights, rtol=1e-3)


# -- DEIS tAB ------------------------------------------------------------------------------
# EDM's VP schedule fitted to [0.002, 80] with epsilon_s = 1e-3, written out independently.
BETA_D = 2 * (math.log(1 + 0.002**2) / 1e-3 - math.log(1 + 80.0**2)) / (1e-3 - 1)
BETA_MIN = math.log(1 + 80.0**2) - 0.5 * BETA_D


def sigma_of_t(t: float) -> float:
    return math.sqrt(math.exp(0.5 * BETA_D * t * t + BETA_MIN * t) - 1)


def t_of_sigma(sigma: float) -> float:
    return (math.sqrt(BETA_MIN**2 + 2 * BETA_D * math.log(1 + sigma**2)) - BETA_MIN) / BETA_D


def dsigma_dt(t: float) -> float:
    e = math.exp(0.5 * BETA_D * t * t + BETA_MIN * t)
    return (BETA_D * t + BETA_MIN) * e / (2 * math.sqrt(e - 1))


def quad_tab_weights(sigmas, i, k):
    ts = [t_of_sigma(sigmas[i - j]) for j in range(k)]

    def basis(j, tau):
        return math.prod((tau - ts[m]) / (ts[j] - ts[m]) for m in range(k) if m != j)

    a, b = t_of_sigma(sigmas[i]), t_of_sigma(sigmas[i + 1])
    return [quad(lambda tau, j=j: dsigma_dt(tau) * basis(j, tau), a, b, epsabs=0, epsrel=1e-13,
                 limit=400)[0] for j in range(k)]


def test_vp_maps_are_consistent():
    assert sigma_of_t(1.0) == pytest.approx(80.0, rel=1e-12)
    assert sigma_of_t(1e-3) == pytest.approx(0.002, rel=1e-9)
    assert t_of_sigma(sigma_of_t(0.3)) == pytest.approx(0.3, rel=1e-12)


SCHEDULES = [
    ("time_uniform", {"rho": 2.0}, 11, 0.002, 80.0),
    ("time_uniform", {"rho": 1.0}, 6, 0.002, 80.0),
    ("polynomial", {"rho": 7.0}, 8, 0.002, 80.0),
    ("logsnr", {}, 7, 0.1, 10.0),
    ("logsnr", {}, 4, 0.005, 500.0),  # beyond the fit's range: still a smooth map
]


@pytest.mark.parametrize(("schedule", "options", "n", "sigma_min", "sigma_max"), SCHEDULES)
def test_deis_tab_coefficients_match_adaptive_quadrature(schedule, options, n, sigma_min, sigma_max):
    sigmas = tuple(ds.get_schedule(schedule, **options).sigmas(n, sigma_min, sigma_max).tolist())
    coefficients = [step.weights for step in ds.get_solver("deis", max_order=4).prepare(sigmas)]
    for i, ours in enumerate(coefficients):
        k = min(4, i + 1)
        if k == 1:
            assert ours == (sigmas[1] - sigmas[0],)
            continue
        ref = quad_tab_weights(sigmas, i, k)
        scale = max(abs(v) for v in ref)
        assert np.allclose(ours, ref, rtol=0, atol=1e-11 * scale), (i, ours, ref)
        assert sum(ours) == pytest.approx(sigmas[i + 1] - sigmas[i], rel=1e-12)


# -- exponential integrators: consistency of the expanded weights ------------------------------

@pytest.mark.parametrize("name", ["dpmpp", "unipc"])
@pytest.mark.parametrize("max_order", [1, 2, 3])
@pytest.mark.parametrize("predict_x0", [True, False])
def test_exponential_integrator_weights_are_exact_for_constant_model_output(name, max_order, predict_x0):
    """A constant data prediction m keeps ``x_t = (t/s) x + (1 - t/s) m`` exact; a constant noise
    prediction e gives ``x_t = x + (t - s) e``: the weights must sum accordingly."""
    sigmas = tuple(ds.get_schedule("logsnr").sigmas(9, 0.05, 20.0).tolist())
    solver = ds.get_solver(name, max_order=max_order, predict_x0=predict_x0)
    for i, c in enumerate(solver.prepare(sigmas)):
        s, t = sigmas[i], sigmas[i + 1]
        if name == "dpmpp":
            a, groups = c[0], [c[1]]
        else:
            a = c.a
            groups = [c.predictor]
            if c.corrector is not None:
                groups.append((*c.corrector, c.corrector_new))
        for weights in groups:
            if predict_x0:
                assert a == pytest.approx(t / s, rel=1e-14)
                assert sum(weights) == pytest.approx(1 - t / s, rel=1e-12)
            else:
                assert a == 1.0
                assert sum(weights) == pytest.approx(t - s, rel=1e-12)
