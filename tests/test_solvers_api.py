"""Solver contracts: registration, protocols, options, exact NFE, errors, run mechanics."""

from __future__ import annotations

import math

import pytest
import torch

import diffsampler as ds
from diffsampler.plugins.models.gmm import gmm

BASE = gmm(shape=(2, 3), components=3, spread=0.3, seed=2)
NAMES = ["euler", "heun", "dpm", "dpmpp", "unipc", "deis", "ipndm", "ipndm_v"]
# Every solver with its non-default variants that change the control flow.
VARIANTS = [
    ("euler", {}), ("heun", {}), ("dpm", {}), ("dpm", {"r": 0.25}),
    ("dpmpp", {}), ("dpmpp", {"max_order": 1}), ("dpmpp", {"predict_x0": False}),
    ("dpmpp", {"lower_order_final": False, "thresholding": "dynamic"}),
    ("unipc", {}), ("unipc", {"max_order": 1}), ("unipc", {"variant": "bh1", "predict_x0": False}),
    ("unipc", {"max_order": 2, "lower_order_final": False, "thresholding": "dynamic"}),
    ("deis", {}), ("deis", {"max_order": 1}), ("deis", {"deis_mode": "rhoab", "max_order": 3}),
    ("ipndm", {}), ("ipndm", {"max_order": 1}), ("ipndm_v", {}), ("ipndm_v", {"max_order": 1}),
]


class Counting:
    """The GMM, counting evaluations; optionally corrupting one of them."""

    def __init__(self, corrupt_at: int | None = None, corrupt: str = "nan") -> None:
        self.calls = 0
        self.corrupt_at = corrupt_at
        self.corrupt = corrupt
        self.shape, self.sigma_min, self.sigma_max = BASE.shape, BASE.sigma_min, BASE.sigma_max

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        out = BASE(x, sigma, cond)
        if self.corrupt_at is not None and self.calls == self.corrupt_at:
            if self.corrupt == "nan":
                return torch.full_like(out, math.nan)
            return out[:, :1]
        return out


def sigmas(n: int) -> torch.Tensor:
    return ds.get_schedule("polynomial").sigmas(n, 0.02, 20.0)


def noise(batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *BASE.shape, generator=g, dtype=torch.float64)


def test_all_solvers_are_registered_and_are_solvers():
    registered = {c["name"] for c in ds.list_components("solver")}
    assert set(NAMES) <= registered
    for name in NAMES:
        solver = ds.get_solver(name)
        assert isinstance(solver, ds.Solver)
        assert isinstance(solver, ds.ODESolver)
        assert solver.paper and type(solver).__doc__


def test_option_names_and_defaults():
    expected = {
        "heun": {},
        "dpm": {"r": 0.5},
        "dpmpp": {"max_order": 3, "predict_x0": True, "lower_order_final": True, "thresholding": None},
        "unipc": {"max_order": 3, "variant": "bh2", "predict_x0": True, "lower_order_final": True,
                  "thresholding": None},
        "deis": {"max_order": 4, "deis_mode": "tab"},
        "ipndm": {"max_order": 4},
        "ipndm_v": {"max_order": 4},
    }
    for name, defaults in expected.items():
        options = ds.describe_options(type(ds.get_solver(name)).Options)
        assert {o.name: o.default for o in options} == defaults
        assert all(o.help for o in options)


def test_order_follows_the_options():
    assert ds.get_solver("euler").order == 1
    assert ds.get_solver("heun").order == 2
    assert ds.get_solver("dpm").order == 2
    for name, high in [("dpmpp", 3), ("unipc", 3), ("deis", 4), ("ipndm", 4), ("ipndm_v", 4)]:
        assert ds.get_solver(name).order == high
        assert ds.get_solver(name, max_order=2).order == 2


BAD_OPTIONS = [
    ("dpmpp", {"max_order": 0}), ("dpmpp", {"max_order": 4}), ("dpmpp", {"max_order": 2.5}),
    ("dpmpp", {"max_order": True}), ("dpmpp", {"thresholding": "static"}),
    ("dpmpp", {"thresholding": "dynamic", "predict_x0": False}),
    ("unipc", {"max_order": 4}), ("unipc", {"variant": "bh3"}), ("unipc", {"thresholding": 1}),
    ("unipc", {"thresholding": "dynamic", "predict_x0": False}),
    ("deis", {"max_order": 5}), ("deis", {"max_order": 0}), ("deis", {"deis_mode": "ab"}),
    ("ipndm", {"max_order": 5}), ("ipndm", {"max_order": -1}), ("ipndm_v", {"max_order": 5}),
    ("ipndm_v", {"max_order": "x"}), ("dpm", {"r": 0}), ("dpm", {"r": 1.5}), ("dpm", {"r": -0.5}),
    ("heun", {"max_order": 2}), ("ipndm", {"order": 2}),
]


@pytest.mark.parametrize(("name", "options"), BAD_OPTIONS)
def test_bad_options_raise_one_clear_error(name, options):
    with pytest.raises(ds.OptionError) as info:
        ds.get_solver(name, **options)
    message = str(info.value)
    assert name in message or any(key in message for key in options)


def test_options_from_cli_strings():
    solver = ds.get_solver("dpmpp", max_order="2", predict_x0="false", lower_order_final="no",
                           thresholding="none")
    assert (solver.options.max_order, solver.options.predict_x0) == (2, False)
    assert solver.options.thresholding is None
    assert ds.get_solver("unipc", thresholding="dynamic").options.thresholding == "dynamic"
    assert ds.get_solver("dpm", r="0.3").options.r == 0.3


def expected_nfe(name: str, n: int, afs: bool, dtz: bool) -> int:
    per_step = 2 if name in ("heun", "dpm") else 1
    return per_step * (n - 1) - int(afs) + int(dtz)


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_nfe_table(name, options):
    """For every num_steps 2..7 and AFS / denoise-to-zero: the evaluations actually made, the
    reported NFE and the predicted NFE are one number."""
    solver = ds.get_solver(name, **options)
    for n in range(2, 8):
        for afs in (False, True):
            for dtz in (False, True):
                model = Counting()
                s = sigmas(n)
                result = solver.sample(model, noise() * float(s[0]), s, afs=afs, denoise_to_zero=dtz)
                want = expected_nfe(name, n, afs, dtz)
                assert model.calls == result.nfe == solver.nfe(n, afs=afs, denoise_to_zero=dtz) == want


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_trajectory_and_denoise_to_zero(name, options):
    solver = ds.get_solver(name, **options)
    s = sigmas(6)
    x = noise() * float(s[0])
    plain = solver.sample(BASE, x, s)
    traj = solver.sample(BASE, x, s, return_trajectory=True)
    assert traj.trajectory.shape == (6, *x.shape)
    assert torch.equal(traj.trajectory[0], x) and torch.equal(traj.trajectory[-1], traj.x)
    assert torch.equal(traj.x, plain.x)
    dtz = solver.sample(BASE, x, s, denoise_to_zero=True, return_trajectory=True)
    assert dtz.trajectory.shape == (7, *x.shape)
    last = BASE(plain.x, torch.full((x.shape[0],), float(s[-1]), dtype=x.dtype))
    assert torch.allclose(dtz.x, last, rtol=0, atol=1e-12)
    assert torch.isfinite(plain.x).all()


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_afs_replaces_the_first_evaluation(name, options):
    """AFS changes the result (the first derivative is analytic) and costs one NFE less."""
    solver = ds.get_solver(name, **options)
    s = sigmas(5)
    x = noise() * float(s[0])
    with_afs = solver.sample(BASE, x, s, afs=True)
    without = solver.sample(BASE, x, s)
    assert with_afs.nfe == without.nfe - 1
    assert not torch.equal(with_afs.x, without.x)
    assert float((with_afs.x - without.x).abs().max()) < 0.5  # a small perturbation, not garbage


@pytest.mark.parametrize("name", NAMES)
def test_bad_sigmas_and_shapes_raise_sampling_errors(name):
    solver = ds.get_solver(name)
    x = noise() * 20.0
    for bad in ([20.0], [1.0, 2.0, 3.0], [20.0, -1.0], [20.0, math.nan, 1.0], [20.0, 20.0, 1.0],
                torch.ones(2, 2)):
        with pytest.raises(ds.SamplingError):
            solver.sample(BASE, x, bad)
    with pytest.raises(ds.SamplingError):
        solver.sample(BASE, torch.zeros(3, 7), sigmas(4))
    with pytest.raises(ds.OptionError):
        solver.nfe(1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("corrupt_at", [1, 3])
def test_non_finite_or_misshapen_denoiser_output_is_reported(name, corrupt_at):
    solver = ds.get_solver(name)
    s = sigmas(6)
    with pytest.raises(ds.SamplingError, match="non-finite"):
        solver.sample(Counting(corrupt_at=corrupt_at), noise() * float(s[0]), s)
    with pytest.raises(ds.SamplingError, match="shape"):
        solver.sample(Counting(corrupt_at=corrupt_at, corrupt="shape"), noise() * float(s[0]), s)


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_runs_in_float32_and_float64(name, options):
    solver = ds.get_solver(name, **options)
    s = sigmas(7)
    out64 = solver.sample(BASE, noise() * float(s[0]), s).x
    out32 = solver.sample(BASE, noise().float() * float(s[0]), s).x
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert torch.allclose(out32.double(), out64, rtol=0, atol=1e-4)


def test_one_solver_object_serves_many_runs():
    """Per-run state lives in the run: interleaved runs of one solver give the same results."""
    solver = ds.get_solver("unipc")
    a, b = sigmas(5), sigmas(8)
    x = noise()
    first = solver.sample(BASE, x * float(a[0]), a).x
    solver.sample(BASE, x * float(b[0]), b)
    assert torch.equal(solver.sample(BASE, x * float(a[0]), a).x, first)


def test_high_level_sample_api_with_every_solver():
    for name in NAMES:
        result = ds.sample(noise(2), model=BASE, solver=name, schedule="logsnr", nfe=6)
        assert result.nfe == 6 and result.x.shape == (2, *BASE.shape)


@pytest.mark.parametrize("name", ["dpmpp", "euler"])
def test_the_one_call_api_uses_the_solvers_recommended_schedule_like_the_cli(name):
    from diffsampler.runs import RunConfig, execute, plan_run

    plan = plan_run(RunConfig(solver=name, nfe=6, seeds=(0, 1)))
    got = []
    execute(plan, on_batch=lambda batch, x: got.append(x), overlap=False)
    one_call = ds.sample(ds.seed_noise([0, 1], plan.model.shape), solver=name, nfe=6)
    torch.testing.assert_close(one_call.x, got[0], rtol=0, atol=0)


def test_unknown_names_suggest_prefix_matches():
    with pytest.raises(ds.UnknownComponentError, match=r"did you mean 'l2-exact' or 'l2-teacher'\?; available: "):
        ds.get_metric("l2")
