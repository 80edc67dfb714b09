"""AMED: predictor ranges, the steps against independent solvers, training, the file, the
model identity check, NFE, and the command line (Zhou et al. CVPR 2024)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import diffsampler as ds
from diffsampler.cli import build_app
from diffsampler.errors import OptionError


@pytest.fixture(scope="module")
def digits():
    return ds.get_model("digits")


def settings(**kw):
    base = dict(solver="amed", num_steps=4, afs=False, scale_dir=0.0, scale_time=0.0, max_order=3,
                predict_x0=True, lower_order_final=True, schedule="polynomial",
                schedule_options={"rho": 7.0})
    base.update(kw)
    return base


def constant_predictor(digits, r: float, **kw):
    """A predictor whose ``r`` is ``r`` whatever its inputs (weights zero, bias logit r)."""
    from diffsampler.plugins.amed.predictor import AMEDPredictor, model_identity

    s = settings(**kw)
    sig = ds.get_schedule("polynomial", rho=7.0).sigmas(s["num_steps"], digits.sigma_min, digits.sigma_max)
    s["sigmas"] = sig.tolist()
    pred = AMEDPredictor(s, model_identity(digits, name="digits"), hidden_dim=8)
    with torch.no_grad():
        pred.fc_r.weight.zero_()
        pred.fc_r.bias.fill_(math.log(r / (1 - r)))
    return pred


def solver_for(pred, path):
    pred.save(path)
    name = "amed" if pred.student == "amed" else f"amed-{pred.student}"
    return ds.get_solver(name, predictor=str(path))


def refined(sigmas, r):
    """The student's grid with every intermediate ``t_next^r t^(1-r)`` inserted."""
    out = []
    for a, b in itertools.pairwise(sigmas):
        out += [a, b**r * a ** (1 - r)]
    return [*out, sigmas[-1]]


def noise(digits, n=4):
    return ds.seed_noise(range(n), digits.shape, dtype=torch.float64) * digits.sigma_max


# -- predictor ------------------------------------------------------------------------------
@pytest.mark.parametrize("bounds", [(0.0, 0.0), (0.01, 0.2), (0.3, 0.05)])
def test_predictor_outputs_lie_in_their_ranges(digits, bounds):
    from diffsampler.plugins.amed.predictor import AMEDPredictor, model_identity

    sd_bound, st_bound = bounds
    pred = AMEDPredictor(settings(scale_dir=sd_bound, scale_time=st_bound),
                         model_identity(digits, name="digits"), seed=3)
    feats = torch.randn(64, 32, 8, 8, generator=torch.Generator().manual_seed(0)) * 50  # saturate
    for t, tn in [(80.0, 10.0), (1.0, 0.002), (0.5, 0.4)]:
        for f in (feats, None):
            with torch.no_grad():
                r, sd, st = pred(f, t, tn, batch=64)
            assert r.shape == sd.shape == st.shape == (64,)
            assert bool(((r > 0) & (r < 1)).all())
            for v, b in ((sd, sd_bound), (st, st_bound)):
                if b == 0:
                    assert bool((v == 1).all())
                else:
                    assert bool(((v > 1 - b) & (v < 1 + b)).all())


def test_predictor_reads_the_channel_mean(digits):
    from diffsampler.plugins.amed.predictor import AMEDPredictor, model_identity

    pred = AMEDPredictor(settings(scale_dir=0.01), model_identity(digits, name="digits"), seed=1)
    f = torch.randn(3, 32, 8, 8)
    same = f.mean(dim=1, keepdim=True).expand(3, 32, 8, 8)  # equal channel mean, other channels
    for a, b in zip(pred(f, 10.0, 5.0), pred(same, 10.0, 5.0), strict=True):
        torch.testing.assert_close(a, b)
    zero = pred(torch.zeros(3, 32, 8, 8), 10.0, 5.0)
    for a, b in zip(zero, pred(None, 10.0, 5.0, batch=3), strict=True):
        torch.testing.assert_close(a, b)


# -- steps against independent solvers ------------------------------------------------------
@pytest.mark.parametrize(("student", "base", "opts"), [
    ("euler", "euler", {}),
    ("ipndm", "ipndm", {"max_order": 3}),
    ("dpmpp", "dpmpp", {"max_order": 3, "predict_x0": True, "lower_order_final": True}),
    ("dpmpp", "dpmpp", {"max_order": 2, "predict_x0": False, "lower_order_final": False}),
    ("dpmpp", "dpmpp", {"max_order": 3, "predict_x0": True, "lower_order_final": True, "thresholding": "dynamic"}),
])
def test_plugin_with_fixed_r_is_the_base_solver_on_the_refined_grid(digits, tmp_path, student, base, opts):
    r = 0.3
    s_opts = {k: v for k, v in opts.items()}
    pred = constant_predictor(digits, r, solver=student, **s_opts)
    solver = solver_for(pred, tmp_path / "p.safetensors")
    x = noise(digits)
    got = solver.sample(digits, x, pred.settings["sigmas"])
    want = ds.get_solver(base, **opts).sample(digits, x, refined(pred.settings["sigmas"], r))
    torch.testing.assert_close(got.x, want.x, rtol=1e-5, atol=1e-5)
    assert got.nfe == want.nfe == 2 * (pred.num_steps - 1)


def test_dpm_plugin_with_fixed_r_is_dpm_solver_2(digits, tmp_path):
    pred = constant_predictor(digits, 0.4, solver="dpm", afs=True)
    x = noise(digits)
    got = solver_for(pred, tmp_path / "p.safetensors").sample(digits, x, pred.settings["sigmas"], afs=True)
    want = ds.get_solver("dpm", r=0.4).sample(digits, x, pred.settings["sigmas"], afs=True)
    torch.testing.assert_close(got.x, want.x, rtol=1e-5, atol=1e-5)
    assert got.nfe == want.nfe == 2 * (pred.num_steps - 1) - 1


def test_amed_solver_step_by_hand(digits, tmp_path):
    """AMED-Solver (Eq. 9): x_next = x + (t_next - t) d(x + (t_mid - t) d(x, t), t_mid)."""
    r = 0.6
    pred = constant_predictor(digits, r, solver="amed", num_steps=3)
    x0 = noise(digits, 3)
    got = solver_for(pred, tmp_path / "p.safetensors").sample(digits, x0, pred.settings["sigmas"])
    x = x0
    sig = pred.settings["sigmas"]
    def full(s):
        return torch.full((x0.shape[0],), s, dtype=x0.dtype)

    for t, tn in itertools.pairwise(sig):
        tm = tn**r * t ** (1 - r)
        d = (x - digits(x, full(t))) / t
        xm = x + (tm - t) * d
        x = x + (tn - t) * (xm - digits(xm, full(tm))) / tm
    torch.testing.assert_close(got.x, x, rtol=1e-4, atol=1e-4)  # r is float32 in the predictor


# -- NFE ---------------------------------------------------------------------------------------
class Counting:
    """The digits model, counting every evaluation (with or without features)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.shape, self.sigma_min, self.sigma_max = model.shape, model.sigma_min, model.sigma_max
        self.bottleneck_channels = model.bottleneck_channels

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.model(x, sigma, cond)

    def denoise_with_features(self, x, sigma, cond=None):
        self.calls += 1
        return self.model.denoise_with_features(x, sigma, cond)


@pytest.mark.parametrize("student", ["amed", "euler", "ipndm", "dpm", "dpmpp"])
@pytest.mark.parametrize("afs", [False, True])
def test_nfe_is_exact(digits, tmp_path, student, afs):
    pred = constant_predictor(digits, 0.5, solver=student, afs=afs, num_steps=4, scale_dir=0.01)
    solver = solver_for(pred, tmp_path / "p.safetensors")
    counting = Counting(digits)
    for dtz in (False, True):
        counting.calls = 0
        res = solver.sample(counting, noise(digits, 2), pred.settings["sigmas"], afs=afs, denoise_to_zero=dtz)
        assert res.nfe == counting.calls == solver.nfe(4, afs=afs, denoise_to_zero=dtz) == 6 - afs + dtz


# -- file and identity ---------------------------------------------------------------------
def test_save_load_round_trips_exactly(digits, tmp_path):
    from diffsampler.plugins.amed.predictor import AMEDPredictor, load_predictor, model_identity

    pred = AMEDPredictor(settings(scale_dir=0.01, scale_time=0.2, solver="ipndm"),
                         model_identity(digits, name="digits", options={"k": 1}), hidden_dim=16, seed=7)
    path = tmp_path / "p.safetensors"
    pred.save(path)
    back = load_predictor(path)
    assert back.settings == pred.settings and back.model == pred.model and back.hidden_dim == 16
    assert "labels" not in back.settings  # as a file written before labels were recorded: it loads
    a, b = pred.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    f = torch.randn(5, 32, 8, 8)
    for u, v in zip(pred(f, 3.0, 1.0), back(f, 3.0, 1.0), strict=True):
        assert torch.equal(u, v)
    assert back.model == {"name": "digits", "options": {"k": 1}, "shape": [1, 8, 8], "bottleneck_channels": 32}


def test_not_a_predictor_file_is_refused(tmp_path):
    from diffsampler import tensorfile
    from diffsampler.errors import ModelLoadError

    path = tmp_path / "other.safetensors"
    tensorfile.save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match="not an AMED predictor"):
        ds.get_solver("amed", predictor=str(path))
    with pytest.raises(OptionError, match="does not exist"):
        ds.get_solver("amed", predictor=str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("content", [b'{"format": "diffsampler.gits/1", "sigmas": [80, 0.002]}', b""])
def test_another_kind_of_file_or_a_folder_is_named(tmp_path, content):
    from diffsampler.errors import ModelLoadError

    path = tmp_path / "gits.json"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        ds.get_solver("amed-ipndm", predictor=str(path))
    assert str(info.value) == f"{str(path)!r} is not an AMED predictor (a .safetensors file written by diffsampler amed train)"
    with pytest.raises(OptionError, match="is a folder, not a file"):
        ds.get_solver("amed-ipndm", predictor=str(tmp_path))


class OtherShape(Counting):
    def __init__(self, model, shape, channels):
        super().__init__(model)
        self.shape, self.bottleneck_channels = shape, channels


@pytest.mark.parametrize(("shape", "channels"), [((3, 8, 8), 32), ((1, 8, 8), 64)])
def test_a_predictor_is_refused_on_another_model(digits, tmp_path, shape, channels):
    pred = constant_predictor(digits, 0.5)
    solver = solver_for(pred, tmp_path / "p.safetensors")
    x = ds.seed_noise(range(2), shape) * 80
    with pytest.raises(OptionError, match="trained for model 'digits'"):
        solver.sample(OtherShape(digits, shape, channels), x, pred.settings["sigmas"])


def test_models_without_a_bottleneck_are_refused(digits, tmp_path):
    pred = constant_predictor(digits, 0.5)
    solver = solver_for(pred, tmp_path / "p.safetensors")
    empirical = ds.get_model("empirical")
    with pytest.raises(OptionError, match="bottleneck"):
        solver.sample(empirical, ds.seed_noise(range(2), empirical.shape) * 80, pred.settings["sigmas"])
    with pytest.raises(OptionError, match="bottleneck"):
        ds.get_distiller("amed").distill(empirical)


def test_run_settings_must_match_the_training(digits, tmp_path):
    pred = constant_predictor(digits, 0.5, solver="ipndm", afs=True)
    path = tmp_path / "p.safetensors"
    solver = solver_for(pred, path)
    x = noise(digits, 2)
    sig = pred.settings["sigmas"]
    with pytest.raises(OptionError, match="trained for 4 sigmas"):
        solver.sample(digits, x, ds.get_schedule("polynomial").sigmas(5, 0.002, 80.0), afs=True)
    with pytest.raises(OptionError, match="with AFS"):
        solver.sample(digits, x, sig)
    with pytest.raises(OptionError, match="sigmas differ"):
        solver.sample(digits, x, ds.get_schedule("logsnr").sigmas(4, 0.002, 80.0), afs=True)
    with pytest.raises(OptionError, match="'amed-ipndm'"):
        ds.get_solver("amed-euler", predictor=str(path))
    with pytest.raises(OptionError, match="needs a predictor"):
        ds.get_solver("amed").sample(digits, x, sig)


def test_messages_use_the_registered_name():
    for name in ("amed", "amed-euler", "amed-ipndm", "amed-dpm", "amed-dpmpp"):
        solver = ds.get_solver(name)
        assert solver.name == name
        with pytest.raises(OptionError) as info:
            ds.steps_for_nfe(solver, 5)
        assert str(info.value) == f"NFE 5 is not reachable with {name}; nearest: 4 or 6"


@pytest.mark.parametrize("trained_afs", [True, False])
def test_an_nfe_with_the_other_afs_names_the_predictor(digits, tmp_path, trained_afs):
    pred = constant_predictor(digits, 0.5, solver="ipndm", afs=trained_afs)
    path = tmp_path / "p.safetensors"
    solver = solver_for(pred, path)
    nfe = 6 - trained_afs
    assert ds.steps_for_nfe(solver, nfe, afs=trained_afs) == 4
    way = "with" if trained_afs else "without"
    with pytest.raises(OptionError) as info:
        ds.steps_for_nfe(solver, nfe, afs=not trained_afs)
    assert str(info.value) == f"the AMED predictor {str(path)!r} was trained {way} AFS: sample {way} --afs"
    assert ds.get_solver("amed-ipndm").nfe(4, afs=not trained_afs) == 6 - (not trained_afs)  # no predictor


def test_sampling_defaults_are_the_training_settings(digits, tmp_path):
    pred = constant_predictor(digits, 0.5, solver="dpm", afs=True, num_steps=4)
    solver = solver_for(pred, tmp_path / "p.safetensors")
    assert solver.sampling_defaults == {
        "schedule": "polynomial", "schedule_options": {"rho": 7.0}, "num_steps": 4, "afs": True,
    }
    assert ds.get_solver("amed-dpm").sampling_defaults == {}


def test_sample_with_nfe_and_the_other_afs_names_the_reason(digits, tmp_path):
    pred = constant_predictor(digits, 0.5, solver="ipndm", afs=True)
    path = tmp_path / "p.safetensors"
    pred.save(path)
    res = run("sample", "--model", "digits", "--solver", "amed-ipndm", "--opt", f"predictor={path}",
              "--nfe", "5", "--no-afs", "--seeds", "0-1", "--out", str(tmp_path / "s"), "--device", "cpu")
    assert isinstance(res.exception, OptionError), res.output
    assert str(res.exception) == f"the AMED predictor {str(path)!r} was trained with AFS: sample with --afs"
    res = run("sample", "--model", "digits", "--solver", "amed-ipndm", "--opt", f"predictor={path}",
              "--nfe", "5", "--seeds", "0-1", "--out", str(tmp_path / "s"), "--device", "cpu")
    assert res.exit_code == 0, res.output  # AFS left open: the predictor's own


def test_sample_takes_steps_and_afs_from_the_predictor(digits, tmp_path):
    from diffsampler.runs import RunConfig, plan_run

    pred = constant_predictor(digits, 0.5, solver="ipndm", afs=True, num_steps=4)
    path = tmp_path / "p.safetensors"
    pred.save(path)
    plan = plan_run(RunConfig(model="digits", solver="amed-ipndm", solver_options={"predictor": str(path)},
                              seeds=(0,)))
    assert (len(plan.sigmas), plan.config.afs, plan.nfe) == (4, True, 5)
    assert plan.sigmas.tolist() == pytest.approx(pred.settings["sigmas"])
    with pytest.raises(OptionError, match="trained for 4 sigmas"):  # what the user asks for still wins
        plan_run(RunConfig(model="digits", solver="amed-ipndm", solver_options={"predictor": str(path)},
                           num_steps=5, seeds=(0,)))


def test_compare_names_the_predictors_afs_reason(digits, tmp_path):
    from diffsampler.compare import CompareConfig, run_compare

    pred = constant_predictor(digits, 0.5, solver="ipndm", afs=True)
    path = tmp_path / "p.safetensors"
    pred.save(path)
    config = CompareConfig(model="digits", solvers=[f"amed-ipndm[predictor={path}]"], nfes=(5,),
                           seeds=(0,), metrics=("l2-teacher",))
    with pytest.raises(OptionError, match="was trained with AFS: sample with --afs"):
        run_compare(config)


# -- training --------------------------------------------------------------------------------
@pytest.mark.parametrize("student", ["amed", "ipndm"])
def test_training_reduces_the_loss(digits, student):
    from diffsampler.plugins.amed.train import step_losses

    d = ds.get_distiller("amed", solver=student, num_steps=3, batch=8, total_kimg=0.064, lr=5e-3,
                         teacher="heun", m=1, seed=11)
    untrained, fine = d.initial_predictor(digits)  # the same initialisation distill starts from
    sigmas = tuple(untrained.settings["sigmas"])
    x = ds.seed_noise(range(16), digits.shape) * sigmas[0]  # held-out noise (not the training seeds)
    labels = torch.tensor(seed_rule_labels(range(16)))  # random per seed, as the training's
    with torch.no_grad():
        points = d.teacher_points(digits, x, fine, cond=labels)
    before = step_losses(digits, untrained, x, points, sigmas, cond=labels)
    events = []
    trained = d.distill(digits, progress=events.append)
    assert trained.settings["labels"] == "random"
    after = step_losses(digits, trained, x, points, sigmas, cond=labels)
    assert sum(after) < 0.9 * sum(before), (before, after)
    assert len(events) == 8 * 2 and {"loss", "r_mean", "r_std", "scale_dir_mean", "scale_time_std"} <= events[0].keys()
    assert all(0 < e["r_mean"] < 1 and 0.99 <= e["scale_dir_mean"] <= 1.01 for e in events)


# -- class labels (the seed: a random class per training trajectory) ---------------------------
def seed_rule_labels(seeds, classes=10):
    """Per-seed labels as ``diffsampler sample --labels random`` draws them, written out."""
    import numpy as np

    return [int(np.random.default_rng([int(s), 1]).integers(classes)) for s in seeds]


class Labelled(Counting):
    """The digits model as a class-conditional one, recording the conditioning of every evaluation."""

    label_dim = 10

    def __init__(self, model, check=None):
        super().__init__(model)
        self.conds, self.check = [], check

    def check_labels(self, choice):
        if self.check is not None:
            self.check(choice)

    def __call__(self, x, sigma, cond=None):
        self.conds.append(cond)
        return super().__call__(x, sigma, cond)

    def denoise_with_features(self, x, sigma, cond=None):
        self.conds.append(cond)
        return super().denoise_with_features(x, sigma, cond)


TRAIN = dict(solver="euler", num_steps=3, batch=4, total_kimg=0.008, teacher="heun", m=2, seed=5)


def test_teacher_points_take_the_labels(digits):
    d = ds.get_distiller("amed", **TRAIN)
    _, fine = d.initial_predictor(digits)
    x = noise(digits).float()
    labels = torch.tensor(seed_rule_labels(range(4)))
    got = d.teacher_points(digits, x, fine, cond=labels)
    direct = ds.get_solver("heun").sample(digits, x, list(fine), cond=labels, return_trajectory=True)
    assert torch.equal(got, direct.trajectory[3::3]) and got.shape[0] == 2
    bare = d.teacher_points(digits, x, fine)
    assert (got - bare).abs().max() > 0.05  # the all-zero label vector is another teacher


def test_training_gives_every_evaluation_the_seeds_random_labels(digits):
    model = Labelled(digits)
    pred = ds.get_distiller("amed", **TRAIN).distill(model)
    assert pred.settings["labels"] == "random" and pred.settings["iterations"] == 2
    per_iteration = [seed_rule_labels(range(5 + 4 * it, 9 + 4 * it)) for it in range(2)]
    seen = [c.tolist() for c in model.conds]
    assert seen[0] == per_iteration[0] and seen[-1] == per_iteration[1]
    assert {tuple(c) for c in seen} == {tuple(v) for v in per_iteration}
    # the same per-seed labels handed in as cond train the same weights; no labels train others
    given = ds.get_distiller("amed", **TRAIN).distill(
        Labelled(digits), cond=lambda seeds: torch.tensor(seed_rule_labels(seeds)))
    assert given.settings["labels"] == "cond"
    bare = ds.get_distiller("amed", **TRAIN, labels="none").distill(Labelled(digits))
    assert bare.settings["labels"] == "none"
    for a, b in zip(pred.parameters(), given.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(pred.parameters(), bare.parameters(), strict=True))


def test_labels_choices_and_refusals(digits):
    assert ds.get_distiller("amed").options.labels == "auto"
    fixed = Labelled(digits)
    assert ds.get_distiller("amed", **TRAIN, labels=7).distill(fixed).settings["labels"] == "7"
    assert {tuple(c.tolist()) for c in fixed.conds} == {(7,) * 4}

    def no_unconditional_mode(choice):
        if choice is None:
            raise OptionError("model 'x' has no unconditional mode: choose classes with --labels")

    strict = Labelled(digits, check=no_unconditional_mode)
    with pytest.raises(OptionError, match="no unconditional mode"):
        ds.get_distiller("amed", **TRAIN, labels="none").distill(strict)
    with pytest.raises(OptionError, match="class 10 is out of range"):
        ds.get_distiller("amed", **TRAIN, labels=10).distill(strict)
    assert strict.calls == 0  # refused before any work
    with pytest.raises(OptionError, match="option labels must be"):
        ds.get_distiller("amed", labels="all")


def test_models_without_classes_are_unaffected(digits):
    a = ds.get_distiller("amed", **TRAIN).distill(Counting(digits))
    b = ds.get_distiller("amed", **TRAIN, labels="none").distill(Counting(digits))
    assert a.settings["labels"] == b.settings["labels"] == "none"
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(OptionError, match="not class-conditional"):
        ds.get_distiller("amed", **TRAIN, labels="random").distill(Counting(digits))


def test_schedule_must_refine(digits):
    from diffsampler.plugins.amed.train import schedule_pair

    d = ds.get_distiller("amed", num_steps=4, m=2, schedule="logsnr")
    student, teacher, opts = schedule_pair(digits, d.options)
    assert len(teacher) == 3 * 3 + 1 and opts == {}
    assert all(math.isclose(a, b) for a, b in zip(student, teacher[::3], strict=True))


# -- command line -----------------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(build_app(), list(args))


def test_registration_does_not_import_torch():
    code = (
        "import sys, diffsampler as ds, diffsampler.plugins.amed as p\n"
        "reg = ds.discover(entry_points=False, plugins=[('amed', p)])\n"
        "assert not reg.failures, reg.failures\n"
        "assert reg.get('distiller', 'amed') and reg.get('solver', 'amed-dpmpp')\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_train_then_sample(tmp_path):
    out = tmp_path / "p.safetensors"
    res = run("amed", "train", "--solver", "euler", "--nfe", "3", "--batch", "4", "--total-kimg", "0.008",
              "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["num_steps"] == 3 and summary["nfe"] == 3 and summary["solver"] == "amed-euler"
    assert summary["command"].startswith("diffsampler sample --model digits --solver amed-euler ")
    res = run("sample", "--model", "digits", "--solver", "amed-euler", "--opt", f"predictor={out}",
              "--steps", "3", "--afs", "--seeds", "0-3", "--out", str(tmp_path / "s"))
    assert res.exit_code == 0, res.output
    res = run("amed", "train", "--solver", "euler", "--nfe", "3", "--batch", "4", "--total-kimg", "0.008",
              "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (f"use: diffsampler sample --model digits --solver amed-euler --opt predictor={out} "
            "--schedule polynomial --schedule-opt rho=7.0 --steps 3 --labels random --afs") in res.output.splitlines()
    res = run("amed", "train", "--nfe", "4", "--out", str(out))
    assert isinstance(res.exception, OptionError) and str(res.exception) == (
        "NFE 4 is not reachable with AMED (amed) and AFS: each step spends 2 NFE, AFS saves 1, so the NFE is odd "
        "(--nfe 3 or 5, or --no-afs)")


def test_cli_labels(tmp_path):
    from diffsampler.plugins.amed.predictor import load_predictor

    out = tmp_path / "p.safetensors"
    common = ["amed", "train", "--solver", "euler", "--nfe", "3", "--batch", "2", "--total-kimg", "0.002",
              "--out", str(out)]
    for labels, recorded in (("none", "none"), ("seed", "seed"), ("auto", "random")):
        res = run(*common, "--labels", labels, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output[res.output.index("{"):])["labels"] == recorded
        assert load_predictor(out).settings["labels"] == recorded
    res = run(*common, "--labels", "11")
    assert isinstance(res.exception, OptionError) and "class 11 is out of range" in str(res.exception)


def test_train_refuses_a_folder_as_out_before_training(tmp_path):
    res = run("amed", "train", "--solver", "euler", "--nfe", "3", "--batch", "4", "--total-kimg", "0.008",
              "--out", str(tmp_path))
    assert isinstance(res.exception, OptionError), res.output
    assert str(res.exception) == f"--out {str(tmp_path)!r} is a folder; give a file name"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("schedule", ["gits", "sfd"])
def test_train_refuses_a_schedule_read_from_a_file(schedule, tmp_path):
    res = run("amed", "train", "--solver", "euler", "--nfe", "3", "--schedule", schedule, "--batch", "4",
              "--total-kimg", "0.008", "--out", str(tmp_path / "p.safetensors"))
    assert isinstance(res.exception, OptionError), res.output
    assert str(res.exception) == (
        "AMED trains on a schedule computed for any number of points, such as polynomial, "
        f"logsnr or time_uniform; {schedule!r} reads a fixed list of sigmas from a file"
    )
    with pytest.raises(OptionError, match="reads a fixed list of sigmas from a file"):
        ds.get_distiller("amed", schedule=schedule)


def test_info_lists_the_options():
    res = run("info", "amed", "--json")
    assert res.exit_code == 0, res.output
    found = {(c["kind"], c["name"]): c for c in json.loads(res.output)}
    opts = {o["name"]: o["default"] for o in found[("distiller", "amed")]["options"]}
    assert opts["scale_dir"] == 0.01 and opts["m"] == 1 and opts["teacher"] == "heun" and opts["lr"] == 5e-3
    assert ("solver", "amed") in found


def test_stop_between_iterations_keeps_what_was_trained(digits):
    args = dict(solver="euler", num_steps=3, batch=4, total_kimg=0.02, lr=5e-3, teacher="heun", m=1, seed=3)
    asked = []

    def stop_after_two():
        asked.append(1)
        return len(asked) > 2

    stopped = ds.get_distiller("amed", **args).distill(digits, stop=stop_after_two)
    assert (stopped.settings["iterations"], stopped.settings["iterations_planned"]) == (2, 5)
    shorter = ds.get_distiller("amed", **{**args, "total_kimg": 0.008}).distill(digits)  # 2 iterations
    assert shorter.settings["iterations"] == 2
    for a, b in zip(stopped.parameters(), shorter.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ctrl_c_writes_the_predictor_trained_so_far(tmp_path, monkeypatch):
    import os
    import signal

    from diffsampler.plugins.amed import train as amed_train

    real = amed_train.step_losses
    calls = []

    def interrupted_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # as if Ctrl-C came during the second iteration
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(amed_train, "step_losses", interrupted_after_two)
    out = tmp_path / "p.safetensors"
    res = run("amed", "train", "--solver", "euler", "--nfe", "3", "--batch", "4", "--total-kimg", "0.02",
              "--out", str(out))
    assert res.exit_code == 130, res.output
    assert (f"interrupted at iteration 2/5; the predictor trained so far was written to {out}; rerun the "
            "same command to train it fully") in res.stderr
    from diffsampler.plugins.amed.predictor import load_predictor

    assert load_predictor(out).settings["iterations"] == 2 and len(calls) == 2
    calls.clear()  # again over the predictor now there: it is kept, the new one goes beside it
    before = out.read_bytes()
    res = run("amed", "train", "--solver", "euler", "--nfe", "3", "--batch", "4", "--total-kimg", "0.02",
              "--out", str(out))
    aside = tmp_path / "p-interrupted.safetensors"
    assert res.exit_code == 130 and out.read_bytes() == before and load_predictor(aside).settings["iterations"] == 2
    assert f"written to {aside} ({out} is kept: it was there before)" in res.stderr


def test_the_seeds_thresholding_is_no_no_op_on_digits(digits):
    """docs/amed.md: digits' x0 estimates overshoot ±1, so the seed's dynamic thresholding (which
    amed-dpmpp leaves out) rescales them and changes data-prediction samples."""
    x = noise(digits, 16).float()
    grid = ds.get_schedule("polynomial").sigmas(21, digits.sigma_min, digits.sigma_max)
    points = ds.get_solver("heun").sample(digits, x, grid, return_trajectory=True).trajectory
    for i in (0, 10, 15, 19):  # sigma 80, 2.5, 0.17, 0.006 along the ODE trajectories
        d = digits(points[i], torch.full((16,), float(grid[i])))
        s = torch.quantile(d.abs().flatten(1), 0.995, dim=1)
        assert (s > 1).float().mean() >= 0.75 and 1.01 < float(s.clamp(min=1).mean()) < 1.15
    sig = ds.get_schedule("polynomial").sigmas(6, digits.sigma_min, digits.sigma_max)
    off = ds.get_solver("dpmpp").sample(digits, x, sig).x
    on = ds.get_solver("dpmpp", thresholding="dynamic").sample(digits, x, sig).x
    assert (on - off).flatten(1).square().mean(1).sqrt().mean() > 0.01


@pytest.mark.parametrize("afs", [False, True])
def test_dpmpp_thresholding_as_the_seed_reaches_every_data_prediction(digits, tmp_path, afs):
    pred = constant_predictor(digits, 0.3, solver="dpmpp", thresholding="dynamic", afs=afs)
    x = noise(digits)
    got = solver_for(pred, tmp_path / "p.safetensors").sample(digits, x, pred.settings["sigmas"], afs=afs)
    fine = refined(pred.settings["sigmas"], 0.3)
    want = ds.get_solver("dpmpp", thresholding="dynamic").sample(digits, x, fine, afs=afs)
    plain = ds.get_solver("dpmpp").sample(digits, x, fine, afs=afs)
    torch.testing.assert_close(got.x, want.x, rtol=1e-5, atol=1e-5)
    assert (got.x - plain.x).square().mean().sqrt() > 1e-3  # thresholding acts on digits


def test_thresholding_option_reaches_the_teacher_and_is_refused_where_it_cannot_act(digits):
    d = ds.get_distiller("amed", solver="dpmpp", teacher="dpmpp", thresholding="dynamic", num_steps=3, m=1)
    _, fine = d.initial_predictor(digits)
    x = noise(digits)
    want = ds.get_solver("dpmpp", max_order=3, thresholding="dynamic").sample(digits, x, fine, return_trajectory=True)
    torch.testing.assert_close(d.teacher_points(digits, x, fine), want.trajectory[2::2])
    with pytest.raises(OptionError, match="the student \\(solver\\) or the teacher must be dpmpp"):
        ds.get_distiller("amed", solver="euler", teacher="heun", thresholding="dynamic")
    with pytest.raises(OptionError, match="thresholding needs predict_x0=True"):
        ds.get_distiller("amed", solver="dpmpp", thresholding="dynamic", predict_x0=False)


def test_the_printed_command_samples_with_the_trained_schedule_options_and_labels(tmp_path):
    import shlex

    out = tmp_path / "p.safetensors"
    res = run("amed", "train", "--solver", "ipndm", "--nfe", "4", "--no-afs", "--rho", "5", "--batch", "4",
              "--total-kimg", "0.008", "--out", str(out))
    assert res.exit_code == 0, res.output
    (hint,) = [line for line in res.output.splitlines() if line.startswith("use: diffsampler sample ")]
    assert "--schedule-opt rho=5.0" in hint
    args = shlex.split(hint.removeprefix("use: diffsampler "))
    assert run(*args, "--seeds", "0-1", "--out", str(tmp_path / "s")).exit_code == 0
    # without --labels the predictor's own (random, as trained) is used, and recorded
    plain = run("sample", "--model", "digits", "--solver", "amed-ipndm", "--opt", f"predictor={out}",
                "--seeds", "0-1", "--out", str(tmp_path / "t"))
    assert plain.exit_code == 0, plain.output
    assert json.loads((tmp_path / "t" / "config.json").read_text())["config"]["labels"] == "random"
    wrong = run("sample", "--model", "digits", "--solver", "amed-ipndm", "--opt", f"predictor={out}",
                "--schedule", "polynomial", "--steps", "3", "--seeds", "0", "--out", str(tmp_path / "u"))
    assert "(use --schedule polynomial --schedule-opt rho=5.0)" in str(wrong.exception)


def test_compare_warns_when_a_row_was_trained_with_other_labels(tmp_path):
    out = tmp_path / "p.safetensors"
    assert run("amed", "train", "--solver", "euler", "--nfe", "3", "--batch", "4", "--total-kimg", "0.008",
               "--out", str(out)).exit_code == 0
    args = ("compare", "--model", "digits", "--solver", f"amed-euler[predictor={out}]", "--nfe", "3", "--afs",
            "--seeds", "0-3", "--metric", "l2-teacher", "--out", str(tmp_path / "c"))
    with pytest.warns(UserWarning, match=r"was trained with labels=random; this comparison samples without labels "
                                         r"\(--labels random samples it as trained\)"):
        assert run(*args).exit_code == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(*args[:-2], "--labels", "random", "--out", str(tmp_path / "d")).exit_code == 0
