"""The four time schedules, against their defining formulas written out independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.plugins.models.gmm import gmm

NAMES = ["polynomial", "logsnr", "time_uniform", "discrete"]


class DDPMTimes:
    """A discrete-time model's maps: DDPM's linear betas (1e-4..0.02, 1000 steps), continuous
    ``t`` in [0, 999] by interpolating log sigma, as LDM / Stable Diffusion wrappers do."""

    def __init__(self) -> None:
        betas = np.linspace(1e-4, 0.02, 1000)
        alphas_bar = np.cumprod(1 - betas)
        self.log_sigmas = np.log(np.sqrt((1 - alphas_bar) / alphas_bar))
        self.shape, self.sigma_min, self.sigma_max = (2,), float(np.exp(self.log_sigmas[0])), 80.0

    def __call__(self, x, sigma, cond=None):
        return torch.zeros_like(x)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        t = np.interp(np.log(sigma.numpy()), self.log_sigmas, np.arange(1000.0))
        return torch.from_numpy(t)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.exp(np.interp(t.numpy(), np.arange(1000.0), self.log_sigmas)))


def test_all_schedules_are_registered_and_are_schedules():
    registered = {c["name"] for c in ds.list_components("schedule")}
    assert set(NAMES) <= registered
    for name in NAMES:
        schedule = ds.get_schedule(name)
        assert isinstance(schedule, ds.Schedule)
        assert type(schedule).paper


def test_rho_defaults():
    assert ds.get_schedule("polynomial").options.rho == 7.0
    assert ds.get_schedule("time_uniform").options.rho == 1.0
    assert ds.get_schedule("discrete").options.rho == 1.0
    with pytest.raises(ds.OptionError):
        ds.get_schedule("time_uniform", rho=0)
    with pytest.raises(ds.OptionError):
        ds.get_schedule("discrete", rho=-1.0)
    with pytest.raises(ds.OptionError):
        ds.get_schedule("logsnr", rho=2.0)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_polynomial(n):
    out = ds.get_schedule("polynomial", rho=7.0).sigmas(n, 0.002, 80.0).numpy()
    roots = out ** (1 / 7)
    assert np.allclose(np.diff(roots), (0.002 ** (1 / 7) - 80 ** (1 / 7)) / (n - 1), rtol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 17])
def test_logsnr_is_uniform_in_log_sigma(n):
    out = ds.get_schedule("logsnr").sigmas(n, 0.002, 80.0)
    assert out.dtype == torch.float64 and out.shape == (n,)
    assert out[0] == 80.0 and out[-1] == 0.002
    steps = np.diff(np.log(out.numpy()))
    assert np.allclose(steps, math.log(0.002 / 80.0) / (n - 1), rtol=1e-12, atol=0)


def vp_sigma(t: np.ndarray, sigma_min: float, sigma_max: float, eps: float = 1e-3) -> np.ndarray:
    """EDM's VP sigma(t) with beta_d, beta_min fitted so that sigma(1) = sigma_max and
    sigma(eps) = sigma_min (EDM / DPM-Solver's time-uniform schedule)."""
    beta_d = 2 * (math.log(sigma_min**2 + 1) / eps - math.log(sigma_max**2 + 1)) / (eps - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    return np.sqrt(np.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


@pytest.mark.parametrize("rho", [1.0, 2.0, 3.5])
@pytest.mark.parametrize(("n", "sigma_min", "sigma_max"), [(2, 0.002, 80.0), (11, 0.002, 80.0),
                                                           (6, 0.03, 14.6)])
def test_time_uniform_is_uniform_in_vp_time(rho, n, sigma_min, sigma_max):
    out = ds.get_schedule("time_uniform", rho=rho).sigmas(n, sigma_min, sigma_max).numpy()
    t = (1 + np.arange(n) / (n - 1) * (1e-3 ** (1 / rho) - 1)) ** rho
    assert np.allclose(out, vp_sigma(t, sigma_min, sigma_max), rtol=1e-10, atol=0)
    assert out[0] == sigma_max and out[-1] == sigma_min


def test_time_uniform_refuses_a_range_its_vp_fit_cannot_cover():
    """For sigma_max = 10, sigma_min = 0.1 the fitted beta(t) turns negative: sigma(t) would not
    be monotone (the seed returned such a schedule silently)."""
    with pytest.raises(ds.OptionError, match="time_uniform"):
        ds.get_schedule("time_uniform").sigmas(6, 0.1, 10.0)


@pytest.mark.parametrize("rho", [1.0, 2.0, 7.0])
@pytest.mark.parametrize("n", [2, 5, 12])
def test_discrete_is_uniform_in_the_models_time(rho, n):
    model = DDPMTimes()
    out = ds.get_schedule("discrete", rho=rho).sigmas(n, 0.03, 14.0, denoiser=model)
    assert out.dtype == torch.float64 and out.shape == (n,)
    t = model.sigma_to_t(out).numpy()
    t_max, t_min = model.sigma_to_t(torch.tensor([14.0, 0.03], dtype=torch.float64)).numpy()
    expected = (t_max ** (1 / rho) + np.arange(n) / (n - 1) * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
    assert np.allclose(t, expected, rtol=1e-9, atol=1e-9)
    assert out[0] == pytest.approx(14.0, rel=1e-12) and out[-1] == pytest.approx(0.03, rel=1e-12)


def test_discrete_equals_the_seed_at_rho_one():
    """The seed's formula (t_max + i/(N-1) (t_min^(1/rho) - t_max))^rho agrees at rho = 1."""
    model = DDPMTimes()
    n = 7
    out = ds.get_schedule("discrete").sigmas(n, 0.03, 14.0, denoiser=model)
    t_max, t_min = model.sigma_to_t(torch.tensor([14.0, 0.03], dtype=torch.float64)).numpy()
    seed_t = t_max + np.arange(n) / (n - 1) * (t_min - t_max)
    assert np.allclose(out.numpy(), model.t_to_sigma(torch.from_numpy(seed_t)).numpy(), rtol=1e-12)


def test_discrete_names_the_lowest_sigma_a_model_can_reach():
    class Extrapolating(DDPMTimes):  # times below step 0 come out negative, as the LDM maps extrapolate
        def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
            log = np.log(sigma.numpy())
            slope = 1.0 / (self.log_sigmas[1] - self.log_sigmas[0])
            inside = np.interp(log, self.log_sigmas, np.arange(1000.0))
            return torch.from_numpy(np.where(log < self.log_sigmas[0], (log - self.log_sigmas[0]) * slope, inside))

    model = Extrapolating()
    with pytest.raises(ds.SamplingError, match=rf"its time 0 is sigma {np.exp(model.log_sigmas[0]):.4g}: keep "
                                               r"sigma_min at or above it\)$"):
        ds.get_schedule("discrete").sigmas(5, 0.001, 14.0, denoiser=model)


def test_discrete_needs_a_time_mapped_model():
    with pytest.raises(ds.OptionError, match="sigma_to_t"):
        ds.get_schedule("discrete").sigmas(5, 0.01, 10.0, denoiser=gmm(shape=(2,)))
    with pytest.raises(ds.OptionError, match="no model"):
        ds.get_schedule("discrete").sigmas(5, 0.01, 10.0)


@pytest.mark.parametrize("name", ["polynomial", "logsnr", "time_uniform"])
def test_bad_arguments_raise_option_errors(name):
    schedule = ds.get_schedule(name)
    for args in [(1, 0.002, 80.0), (5, 80.0, 0.002), (5, 0.0, 80.0), (5, 0.002, math.inf),
                 (2.5, 0.002, 80.0)]:
        with pytest.raises(ds.OptionError):
            schedule.sigmas(*args)


def test_schedules_drive_the_high_level_api():
    model = DDPMTimes()
    noise = torch.randn(2, 2, dtype=torch.float64)
    for name in NAMES:
        result = ds.sample(noise, model=model, solver="euler", schedule=name, num_steps=5,
                           sigma_min=0.03, sigma_max=14.0)
        assert result.sigmas.shape == (5,) and result.nfe == 4
