"""Shared sampling mechanics: AFS, denoise-to-zero, trajectories, NFE, checks, seeds."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.images import make_grid, to_uint8, write_png
from diffsampler.plugins.models.gmm import GaussianMixture, gmm
from diffsampler.runs import RunConfig, execute, plan_run


def _small_gmm() -> GaussianMixture:
    return gmm(shape=(2,), components=3, spread=0.3, seed=1)


def test_euler_with_afs_matches_hand_computation():
    model = _small_gmm()
    sig = [5.0, 1.0, 0.2]
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64) * sig[0]
    res = ds.get_solver("euler").sample(model, x0, sig, afs=True)
    # step 0: analytical first step, no evaluation
    x1 = x0 + (sig[1] - sig[0]) * x0 / math.sqrt(1 + sig[0] ** 2)
    d1 = (x1 - model(x1, torch.full((1,), sig[1], dtype=torch.float64))) / sig[1]
    x2 = x1 + (sig[2] - sig[1]) * d1
    torch.testing.assert_close(res.x, x2, rtol=1e-12, atol=1e-12)
    assert res.nfe == 1


def test_trajectory_and_denoise_to_zero():
    model = _small_gmm()
    sig = [5.0, 2.0, 1.0, 0.5]
    x = torch.randn(3, 2, dtype=torch.float64) * sig[0]
    res = ds.get_solver("euler").sample(model, x, sig, denoise_to_zero=True, return_trajectory=True)
    assert res.trajectory.shape == (5, 3, 2)  # start, 3 steps, denoised end
    torch.testing.assert_close(res.trajectory[0], x)
    expected_end = model(res.trajectory[3], torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(res.x, expected_end)
    torch.testing.assert_close(res.trajectory[-1], res.x)
    assert res.nfe == 4
    assert res.sigmas.dtype == torch.float64 and res.sigmas.tolist() == sig


class _Bad:
    shape = (2,)
    sigma_min, sigma_max = 0.1, 10.0

    def __init__(self, fail_below: float, wrong_shape: bool = False):
        self.fail_below, self.wrong_shape = fail_below, wrong_shape

    def __call__(self, x, sigma, cond=None):
        if self.wrong_shape:
            return x[:, :1]
        out = 0.5 * x
        return out * float("nan") if float(sigma[0]) < self.fail_below else out


def test_non_finite_output_names_step_and_sigma():
    with pytest.raises(ds.SamplingError, match=r"non-finite values at step 2 \(sigma=1\)"):
        ds.get_solver("euler").sample(_Bad(1.5), torch.ones(1, 2), [4.0, 2.0, 1.0, 0.5])


def test_wrong_output_shape_is_refused():
    with pytest.raises(ds.SamplingError, match=r"returned shape \(1, 1\).*step 0"):
        ds.get_solver("euler").sample(_Bad(0, wrong_shape=True), torch.ones(1, 2), [4.0, 1.0])


class _HalfBatch(ds.ODESolver):
    def step(self, run, x, i):
        return x[:1]


class _TwoEvals(ds.ODESolver):  # spends two evaluations per step but says one
    def step(self, run, x, i):
        run.denoise(x, run.sigmas[i])
        return x + (run.sigmas[i + 1] - run.sigmas[i]) * run.derivative(x, run.sigmas[i])


@pytest.mark.parametrize(("solver", "message"), [
    (_HalfBatch, r"_HalfBatch: step 0 returned shape \(1, 2\) for a state shaped \(2, 2\)"),
    (_TwoEvals, r"_TwoEvals: spent 4 NFE but its nfe\(\) says 2 \(set evals_per_step"),
])
def test_a_solver_breaking_the_contract_is_named(solver, message):
    with pytest.raises(ds.PluginError, match=message):
        solver().sample(_small_gmm(), torch.ones(2, 2), [4.0, 2.0, 1.0])


def test_a_solver_without_an_update_rule_is_refused_when_built():
    class NoStep(ds.ODESolver):
        order = 2

    with pytest.raises(ds.PluginError, match=r"solver NoStep does not implement step\(run, x, i\)"):
        NoStep()


@pytest.mark.parametrize(
    "sigmas, message",
    [
        ([1.0], "at least 2"),
        ([1.0, 2.0], "strictly decreasing"),
        ([2.0, 2.0], "strictly decreasing"),
        ([1.0, 0.0], "finite and positive"),
        ([1.0, float("nan")], "finite and positive"),
    ],
)
def test_bad_sigmas_are_refused(sigmas, message):
    with pytest.raises(ds.SamplingError, match=message):
        ds.get_solver("euler").sample(_small_gmm(), torch.ones(1, 2), sigmas)


def test_sample_shape_mismatch_is_refused():
    with pytest.raises(ds.SamplingError, match="model expects"):
        ds.get_solver("euler").sample(_small_gmm(), torch.ones(1, 3), [2.0, 1.0])


def test_schedule_argument_checks():
    sched = ds.get_schedule("polynomial")
    with pytest.raises(ds.OptionError, match="num_steps"):
        sched.sigmas(1, 0.002, 80)
    with pytest.raises(ds.OptionError, match="sigma_min < sigma_max"):
        sched.sigmas(5, 80, 0.002)


def test_polynomial_schedule_matches_edm_formula():
    s = ds.get_schedule("polynomial", rho=7).sigmas(5, 0.002, 80)
    i = np.arange(5)
    ref = (80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-15)
    assert s.dtype == torch.float64 and s[0] == 80 and abs(float(s[-1]) - 0.002) < 1e-15


def test_steps_for_nfe_and_unreachable_budget():
    euler = ds.get_solver("euler")
    assert ds.steps_for_nfe(euler, 7) == 8
    assert ds.steps_for_nfe(euler, 7, afs=True) == 9

    class TwoEval(ds.ODESolver):
        evals_per_step = 2

        def step(self, run, x, i):  # never run: only the NFE arithmetic is asked
            raise AssertionError

    with pytest.raises(ds.OptionError, match=r"NFE 7 is not reachable.*nearest: 6 or 8"):
        ds.steps_for_nfe(TwoEval(), 7)
    assert ds.steps_for_nfe(TwoEval(), 7, afs=True) == 5


def test_seed_parsing():
    assert ds.parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    for bad in ("3-1", "a", "", "1,1", "-5"):
        with pytest.raises(ds.OptionError):
            ds.parse_seeds(bad)


def test_plan_batches_covers_seeds_in_order():
    batches = ds.plan_batches(list(range(10)), 4)
    assert [b.seeds for b in batches] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    with pytest.raises(ds.OptionError):
        ds.plan_batches([1], 0)


def test_each_sample_depends_only_on_its_seed():
    seeds = tuple(range(5, 19))

    def run(batch: int) -> torch.Tensor:
        plan = plan_run(RunConfig(seeds=seeds, batch=batch, nfe=6))
        out: dict[int, torch.Tensor] = {}
        execute(plan, on_batch=lambda b, x: out.update(zip(b.seeds, x, strict=True)))
        return torch.stack([out[s] for s in seeds])

    one, seven = run(1), run(7)
    assert torch.equal(one, seven)
    assert not torch.equal(one[0], one[1])


def test_gmm_denoiser_equals_brute_force_posterior_mean():
    """D(x; sigma) against a self-normalised Monte-Carlo posterior mean over exact data draws."""
    model = _small_gmm()
    data = torch.from_numpy(model.sample_data(400_000, seed=3))
    for sigma in (0.3, 1.0, 4.0):
        x = torch.tensor([[0.2, -0.1], [1.0, 0.5]], dtype=torch.float64)
        logp = -((x[:, None, :] - data[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = torch.softmax(logp, dim=1)
        mc = w @ data
        exact = model(x, torch.full((2,), sigma, dtype=torch.float64))
        torch.testing.assert_close(exact, mc, atol=2e-2, rtol=0)


def test_gmm_moments_match_its_samples_and_data_lies_in_range():
    model = gmm()
    data = model.sample_data(20_000, seed=0).reshape(20_000, -1)
    np.testing.assert_allclose(data.mean(0), model.mean(), atol=0.01)
    cov = model.covariance()
    idx = np.arange(0, cov.shape[0], 97)
    np.testing.assert_allclose(np.cov(data[:, idx].T), cov[np.ix_(idx, idx)], atol=0.02)
    assert np.mean(np.abs(data) <= 1.0) > 0.999


def test_gmm_construction_is_fixed_by_seed():
    a, b, c = gmm(seed=0), gmm(seed=0), gmm(seed=1)
    assert np.array_equal(a.means, b.means) and not np.array_equal(a.means, c.means)


def _read_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert zlib.crc32(tag + body) == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, channels = header[0], header[1], {0: 1, 2: 3, 6: 4}[header[3]]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * channels)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, channels)


def test_png_writer_and_grid(tmp_path):
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    images = to_uint8(x)
    assert images.shape == (2, 4, 5, 3) and images[0, 0, 0, 0] == 0 and images[-1, -1, -1, -1] == 255
    grid = make_grid(images, columns=2, pad=1)
    assert grid.shape == (6, 13, 3)
    assert np.array_equal(grid[1:5, 1:6], images[0]) and np.array_equal(grid[1:5, 7:12], images[1])
    write_png(tmp_path / "g.png", grid)
    assert np.array_equal(_read_png((tmp_path / "g.png").read_bytes()), grid)


def test_seed_lists_print_as_ranges_and_parse_back():
    from diffsampler.seeds import format_seeds

    for text in ("0-1999,2500", "7", "5-6,1,3-4", "0-2,4,6-9"):
        assert format_seeds(ds.parse_seeds(text)) == text
    assert format_seeds([3, 2, 1]) == "3,2,1"  # the order is kept, as parse_seeds keeps it


def test_a_huge_seed_range_is_refused_before_it_is_expanded():
    with pytest.raises(ds.OptionError, match=r"^seed list '0-4294967296' names at least 4,294,967,297 seeds; "
                                             r"at most 10,000,000 per run$"):
        ds.parse_seeds("0-4294967296")
    with pytest.raises(ds.OptionError, match="at least 10,000,001 seeds"):
        ds.parse_seeds("0-9999999,20000000")
    assert len(ds.parse_seeds("0-9999")) == 10_000
