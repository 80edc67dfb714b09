"""Trajectory geometry against independent computations and closed forms.

A single isotropic Gaussian N(mu, s^2 I) has the closed-form probability-flow ODE solution
``x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2)``: a straight line
towards the mean. A K-component mixture keeps every trajectory in span{x_T, mu_1..mu_K}.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.plugins.analysis import geometry as g
from diffsampler.plugins.models.gmm import GaussianMixture

SIGMAS = [80.0, 20.0, 5.0, 1.5, 0.5, 0.1, 0.02, 0.002]


def _single(mu: np.ndarray, s: float) -> GaussianMixture:
    return GaussianMixture(mu[None], np.array([s]), np.array([1.0]))


def _closed_form(mu: np.ndarray, s: float, x_t: np.ndarray, sigmas: list[float]) -> np.ndarray:
    """[P, B, d]: the exact trajectory of N(mu, s^2 I) from x_t ([B, d]) at sigmas[0]."""
    scale = np.sqrt(s**2 + np.asarray(sigmas) ** 2) / np.sqrt(s**2 + sigmas[0] ** 2)
    return mu[None, None] + (x_t - mu)[None] * scale[:, None, None]


def _start(seed: int, b: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, d)) * SIGMAS[0]


def test_deviation_of_a_straight_line_is_zero_and_of_a_bend_is_its_height():
    a, b = np.array([1.0, -2.0, 0.5]), np.array([4.0, 2.0, -1.0])
    t = np.linspace(0, 1, 7) ** 2  # uneven speed along the line
    line = (a + t[:, None] * (b - a))[:, None]  # [P, 1, 3]
    assert np.abs(g.deviation(line)).max() < 1e-12
    bend = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])[:, None]
    np.testing.assert_allclose(g.deviation(bend)[:, 0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(g.deviation(bend, relative=True)[:, 0], [0.0, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(g.chord_length(bend), [2.0])


def test_deviation_matches_an_independent_point_to_line_distance():
    rng = np.random.default_rng(1)
    traj = rng.standard_normal((6, 3, 5))
    dev = g.deviation(traj)
    for b in range(3):
        p0, p1 = traj[0, b], traj[-1, b]
        for i in range(6):
            # |(p - p0) x (p1 - p0)| / |p1 - p0| via the Gram determinant, any dimension
            u, v = traj[i, b] - p0, p1 - p0
            area2 = (u @ u) * (v @ v) - (u @ v) ** 2
            assert dev[i, b] == pytest.approx(np.sqrt(max(area2, 0.0) / (v @ v)), abs=1e-10)


@pytest.mark.parametrize("solver", ["euler", "heun", "ipndm"])
def test_single_gaussian_trajectories_are_straight_lines_towards_the_mean(solver):
    d, s = 12, 0.3
    mu = np.linspace(-0.5, 0.5, d)
    model = _single(mu, s)
    x_t = _start(0, 4, d)
    result = ds.get_solver(solver).sample(
        model, torch.tensor(x_t), SIGMAS, return_trajectory=True
    )
    traj = result.trajectory.numpy()
    assert g.deviation(traj, relative=True).max() < 1e-10
    # every point lies on the ray from mu through x_T
    unit = (x_t - mu) / np.linalg.norm(x_t - mu, axis=1, keepdims=True)
    off = (traj - mu) - np.einsum("pbd,bd->pb", traj - mu, unit)[..., None] * unit
    assert np.abs(off).max() < 1e-9


def test_closed_form_single_gaussian_deviation_and_distance():
    d, s = 10, 0.5
    mu = np.full(d, 0.2)
    x_t = _start(2, 3, d)
    traj = _closed_form(mu, s, x_t, SIGMAS)
    assert g.deviation(traj).max() < 1e-10
    dist = g.distance_to(traj, traj[-1])
    scale = np.sqrt(s**2 + np.asarray(SIGMAS) ** 2) / np.sqrt(s**2 + SIGMAS[0] ** 2)
    expected = np.abs(scale - scale[-1])[:, None] * np.linalg.norm(x_t - mu, axis=1)[None]
    np.testing.assert_allclose(dist, expected, rtol=1e-10, atol=1e-10)


def test_denoising_trajectory_is_the_posterior_mean_along_the_path():
    d, s = 8, 0.4
    mu = np.linspace(0.3, -0.3, d)
    model = _single(mu, s)
    traj = _closed_form(mu, s, _start(3, 5, d), SIGMAS)
    den = g.denoising_trajectory(model, torch.tensor(traj), SIGMAS).numpy()
    shrink = s**2 / (s**2 + np.asarray(SIGMAS) ** 2)
    expected = mu + (traj - mu) * shrink[:, None, None]
    np.testing.assert_allclose(den, expected, rtol=1e-12, atol=1e-12)
    # distances to the final sample, closed form: with a_i = sqrt(s^2 + sigma_i^2) and
    # r = |x_T - mu| / a_0, |x_i - x_N| = r (a_i - a_N) and |D_i - x_N| = r |s^2 / a_i - a_N|
    final = traj[-1]
    dx, dd = g.distance_to(traj, final), g.distance_to(den, final)
    a = np.sqrt(s**2 + np.asarray(SIGMAS) ** 2)
    r = np.linalg.norm(traj[0] - mu, axis=-1) / a[0]
    np.testing.assert_allclose(dx, (a - a[-1])[:, None] * r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dd, np.abs(s**2 / a - a[-1])[:, None] * r, rtol=1e-9, atol=1e-12)
    # the denoising point is the closer one exactly while a_i + s^2 / a_i > 2 a_N: at every
    # point but those right next to the end (where D shrinks past x_N towards mu)
    closer = (a + s**2 / a > 2 * a[-1])[:-1]
    np.testing.assert_array_equal((dd < dx)[:-1], np.repeat(closer[:, None], 5, axis=1))
    assert closer[:-1].all()
    with pytest.raises(ValueError, match="must match"):
        g.denoising_trajectory(model, torch.tensor(traj), SIGMAS[:-1])


def test_pca_shares_sum_to_one_and_match_numpy_svd():
    rng = np.random.default_rng(4)
    points = rng.standard_normal((9, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    res = g.pca(points, k=3)
    assert res.explained.sum() == pytest.approx(1.0, abs=1e-12)
    centred = points - points.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(res.explained, (sv**2 / (sv**2).sum())[:8], rtol=1e-9, atol=1e-14)
    for j in range(3):
        assert abs(res.components[j] @ vt[j]) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(np.abs(res.coords), np.abs(centred @ vt[:3].T), atol=1e-9)


def test_single_gaussian_trajectory_has_one_component_along_x_t_minus_mu():
    d, s = 16, 0.2
    mu = np.linspace(-1, 1, d)
    x_t = _start(5, 3, d)
    traj = _closed_form(mu, s, x_t, SIGMAS)
    res = g.trajectory_pca(traj, 3)
    np.testing.assert_allclose(res.cumulative(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(res.explained.sum(1), 1.0, atol=1e-12)
    for b in range(3):
        comp = g.pca(traj[:, b], 1).components[0]
        direction = (x_t[b] - mu) / np.linalg.norm(x_t[b] - mu)
        assert abs(comp @ direction) == pytest.approx(1.0, abs=1e-10)
    # aligned signs: the first coordinate runs from start to end (increasing)
    assert (res.coords[:, -1, 0] > res.coords[:, 0, 0]).all()


def test_mixture_trajectories_lie_in_the_span_of_start_and_means():
    d = 20
    rng = np.random.default_rng(6)
    means = rng.uniform(-0.6, 0.6, (2, d))
    model = GaussianMixture(means, np.array([0.1, 0.2]), np.array([0.4, 0.6]))
    x_t = torch.tensor(_start(7, 4, d))
    traj = ds.get_solver("heun").sample(model, x_t, SIGMAS, return_trajectory=True).trajectory
    res = g.trajectory_pca(traj, 3)
    # affine span of {x_T, mu_1, mu_2} around the trajectory: at most 3 centred dimensions
    assert (res.cumulative(3) > 1 - 1e-12).all()
    assert res.residual.max() < 1e-8 * g.chord_length(traj).min()
    # and the trajectory really bends: one component is not enough
    assert (res.cumulative(1) < 1 - 1e-9).all()
    assert g.deviation(traj, relative=True).max() > 1e-4


def test_refine_sigmas_keeps_the_coarse_levels_and_is_log_uniform_between():
    fine = g.refine_sigmas(SIGMAS, 3)
    assert len(fine) == (len(SIGMAS) - 1) * 4 + 1
    np.testing.assert_array_equal(fine[::4], SIGMAS)
    logs = np.log(fine[:5])
    np.testing.assert_allclose(np.diff(logs), np.diff(logs)[0], rtol=1e-12)
    np.testing.assert_array_equal(g.refine_sigmas(SIGMAS, 0), SIGMAS)


def test_angles_between_known_vectors():
    v = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.0, -1.0]])[:, None]
    np.testing.assert_allclose(g.angles_between(v)[:, 0], [45.0, 45.0, 180.0], atol=1e-9)


def test_euler_error_vanishes_for_a_point_mass_and_matches_the_closed_form_otherwise():
    d = 6
    mu = np.linspace(-0.4, 0.4, d)
    x_t = _start(8, 3, d)
    # point mass: x(sigma) = mu + (x_T - mu) sigma / sigma_T, linear in sigma: Euler is exact
    point = _single(mu, 0.0)
    teacher = g.teacher_trajectory(point, torch.tensor(x_t), SIGMAS, solver=ds.get_solver("heun"),
                                   substeps=2)
    err, d_vec = g.euler_truncation_error(point, teacher, SIGMAS)
    assert err.max() < 1e-10
    assert g.angles_between(d_vec).max() < 1e-5
    # s > 0: compare with an Euler step from the exact trajectory, computed here in numpy
    s = 0.5
    model = _single(mu, s)
    teacher = g.teacher_trajectory(model, torch.tensor(x_t), SIGMAS, solver=ds.get_solver("heun"),
                                   substeps=40)
    exact = _closed_form(mu, s, x_t, SIGMAS)
    np.testing.assert_allclose(teacher.numpy(), exact, rtol=1e-4, atol=1e-4)
    err, d_vec = g.euler_truncation_error(model, teacher, SIGMAS)
    sig = np.asarray(SIGMAS)
    slope = sig / (s**2 + sig**2)  # dx/dsigma = (x - mu) sigma / (s^2 + sigma^2)
    euler = exact[:-1] + (np.diff(sig) * slope[:-1])[:, None, None] * (exact[:-1] - mu)
    expected = np.sqrt(((euler - exact[1:]) ** 2).mean(-1))
    np.testing.assert_allclose(err, expected, rtol=2e-3, atol=1e-6)
    assert g.angles_between(d_vec).max() < 1e-4  # a straight line never turns


def test_chord_frame_of_straight_and_bent_trajectories():
    d, s = 10, 0.3
    mu = np.linspace(-0.5, 0.5, d)
    x_t = _start(9, 3, d)
    line = _closed_form(mu, s, x_t, SIGMAS)
    frame = g.chord_frame(line, 2)
    chord = g.chord_length(line)
    np.testing.assert_allclose(frame.coords[:, -1], 0.0, atol=1e-9)
    np.testing.assert_allclose(frame.coords[:, 0, 0], -chord, rtol=1e-12)
    assert np.abs(frame.coords[:, :, 1:]).max() < 1e-9 * chord.max()
    np.testing.assert_array_equal(frame.deviation_explained, 0.0)
    # a mixture of two: the deviation from the chord lies in span{x_T, mu_1, mu_2} minus the
    # chord: two dimensions
    rng = np.random.default_rng(10)
    model = GaussianMixture(rng.uniform(-0.6, 0.6, (2, d)), np.array([0.1, 0.2]), np.array([0.5, 0.5]))
    traj = ds.get_solver("heun").sample(model, torch.tensor(x_t), SIGMAS, return_trajectory=True)
    bent = traj.trajectory.numpy()
    frame = g.chord_frame(bent, 2)
    np.testing.assert_allclose(frame.cumulative(2), 1.0, atol=1e-9)
    np.testing.assert_allclose(frame.deviation_explained.sum(1), 1.0, atol=1e-12)
    # against numpy: SVD of the centred points with the chord direction projected out
    for b in range(3):
        pts = bent[:, b]
        u = (pts[-1] - pts[0]) / np.linalg.norm(pts[-1] - pts[0])
        perp = pts - np.outer(pts @ u, u)
        sv = np.linalg.svd(perp - perp.mean(0), compute_uv=False)
        share = sv**2 / (sv**2).sum()
        np.testing.assert_allclose(frame.deviation_explained[b, :3], share[:3], atol=1e-9)
        # coordinate 0 is the projection on the chord, relative to the end
        np.testing.assert_allclose(frame.coords[b, :, 0], (pts - pts[-1]) @ u, rtol=1e-9, atol=1e-9)
        # the chord coordinate and the deviation coordinates rebuild the point up to the residual
        dev = g.deviation(bent[:, b : b + 1])[:, 0]
        np.testing.assert_allclose(np.linalg.norm(frame.coords[b, :, 1:], axis=1), dev,
                                   rtol=1e-6, atol=1e-9 * np.linalg.norm(pts[0]))
