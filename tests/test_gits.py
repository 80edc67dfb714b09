"""GITS (Chen et al. ICML 2024): the DP against brute force, the cost matrix against an
independent loop, determinism, the schedule file, AFS, distributed sums and errors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.plugins.gits.artifact import load_schedule
from diffsampler.plugins.gits.cost import cost_sums
from diffsampler.plugins.gits.dp import dp_path, dp_table, path_cost
from diffsampler.plugins.gits.teacher import teacher_batch

SMALL = dict(shape=(3, 4, 4), components=4)
SOLVERS = ["euler", "heun", "dpm", "dpmpp", "unipc", "deis", "ipndm", "ipndm_v"]


def small_model():
    return ds.get_model("gmm", **SMALL)


def gits(**kw):
    base = dict(num_warmup=12, teacher_steps=13, num_steps=5, batch=5, dtype="float64")
    base.update(kw)
    return ds.get_distiller("gits", **base)


# -- the dynamic program ---------------------------------------------------------------
def brute_force(cost: np.ndarray, num_steps: int, coeff: float) -> tuple[float, list[int]]:
    n = cost.shape[0]
    best, arg = math.inf, None
    for inner in itertools.combinations(range(1, n - 1), num_steps - 2):
        path = [0, *inner, n - 1]
        value = sum(coeff**s * cost[a, b] for s, (a, b) in enumerate(itertools.pairwise(path)))
        if value < best:
            best, arg = value, path
    return best, arg


@pytest.mark.parametrize("coeff", [0.8, 1.0, 1.15, 1.5])
def test_dp_equals_brute_force(coeff):
    rng = np.random.default_rng(int(coeff * 100))
    for trial in range(12):
        n = int(rng.integers(4, 10))
        cost = rng.normal(size=(n, n)) + (0.5 if trial % 2 else 0.0)  # also negative costs (dev)
        table = dp_table(cost, n, coeff)
        for num_steps in range(2, n + 1):
            value, path = brute_force(cost, num_steps, coeff)
            assert table.path(num_steps) == path
            assert table.cost(num_steps) == pytest.approx(value, rel=1e-12, abs=1e-12)
            assert dp_path(cost, num_steps, coeff) == path
            assert path_cost(cost, path, coeff) == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_dp_ties_take_the_first_index_as_the_seed():
    cost = np.zeros((5, 5))  # every path costs 0: the seed's backtracking takes the first match
    assert dp_path(cost, 3, 1.15) == [0, 1, 4]
    assert dp_path(cost, 4, 1.15) == [0, 1, 2, 4]


def test_dp_rejects_bad_input():
    with pytest.raises(ds.OptionError, match="cannot choose 6 points"):
        dp_path(np.zeros((5, 5)), 6, 1.15)
    with pytest.raises(ds.OptionError, match="coeff"):
        dp_path(np.zeros((5, 5)), 3, 0.0)
    with pytest.raises(ds.OptionError, match="square"):
        dp_path(np.zeros((5, 4)), 3, 1.0)
    bad = np.zeros((5, 5))
    bad[1, 3] = np.nan
    with pytest.raises(ds.OptionError, match="non-finite"):
        dp_path(bad, 3, 1.0)


# -- teacher and cost matrix -------------------------------------------------------------
def loop_cost(points: np.ndarray, derivs: np.ndarray, sigmas, metric: str) -> np.ndarray:
    """An independent, loop-by-loop transcription of the seed's cost (mean over samples)."""
    n, b = points.shape[:2]
    x = points.reshape(n, b, -1)
    d = derivs.reshape(n - 1, b, -1)

    def dev(p, start, end):
        bc = end - start
        u = bc / np.sqrt((bc * bc).sum())
        ac = end - p
        perp = ac - (ac @ u) * u
        return float(np.sqrt((perp * perp).sum()))

    out = np.zeros((n, n))
    for s in range(b):
        for i in range(n - 1):
            for j in range(i + 1, n):
                y = x[i, s] + (sigmas[j] - sigmas[i]) * d[i, s]
                if metric == "l1":
                    c = np.abs(y - x[j, s]).sum()
                elif metric == "l2":
                    c = np.sqrt(((y - x[j, s]) ** 2).sum())
                else:
                    teacher = 0.0 if j == n - 1 else dev(x[j, s], x[0, s], x[-1, s])
                    c = dev(y, x[0, s], x[-1, s]) - teacher
                out[i, j] += c / b
    return out


@pytest.mark.parametrize("metric", ["dev", "l1", "l2"])
def test_cost_matrix_equals_loop_computation(metric):
    model = small_model()
    g = gits(metric=metric, num_warmup=7, batch=3)
    result = g.search(model)
    sigmas = result.teacher_sigmas
    noise = ds.seed_noise(range(g.options.seed, g.options.seed + 7), model.shape, dtype=torch.float64)
    tb = teacher_batch(g.teacher_solver(), model, noise, sigmas)
    expected = loop_cost(tb.points.numpy(), tb.derivs.numpy(), sigmas, metric)
    # dev takes a root of a float64 difference: absolute error ~1e-8 |end - x_i| near zero
    atol = 1e-8 if metric == "dev" else 1e-12
    np.testing.assert_allclose(result.cost, expected, rtol=1e-9, atol=atol)
    direct = cost_sums(tb.points, tb.derivs, list(sigmas), metric).numpy() / 7
    np.testing.assert_allclose(direct, expected, rtol=1e-9, atol=atol)


@pytest.mark.parametrize("teacher", ["ipndm", "heun", "dpmpp", "euler"])
def test_teacher_points_and_derivatives(teacher):
    model = small_model()
    solver = ds.get_solver(teacher)
    sigmas = ds.get_schedule("polynomial").sigmas(9, model.sigma_min, model.sigma_max).tolist()
    noise = ds.seed_noise(range(4), model.shape, dtype=torch.float64)
    tb = teacher_batch(solver, model, noise, sigmas)
    ref = solver.sample(model, noise * sigmas[0], sigmas, return_trajectory=True)
    torch.testing.assert_close(tb.points, ref.trajectory, rtol=0, atol=0)
    assert tb.extra_nfe == 0 and tb.nfe == ref.nfe  # derivatives reused, not re-evaluated
    for i, s in enumerate(sigmas[:-1]):
        fresh = (tb.points[i] - model(tb.points[i], torch.full((4,), s, dtype=torch.float64))) / s
        torch.testing.assert_close(tb.derivs[i], fresh, rtol=1e-12, atol=1e-12)


def test_search_is_deterministic_and_batch_independent():
    model = small_model()
    a, b = gits().search(model), gits().search(model)
    np.testing.assert_array_equal(a.cost, b.cost)
    c = gits(batch=12).search(model)
    np.testing.assert_allclose(a.cost, c.cost, rtol=1e-10, atol=1e-12)
    other = gits(seed=5).search(model)
    assert not np.allclose(a.cost, other.cost)
    s1 = gits().schedule(a)
    s2 = gits().schedule(b)
    assert s1.sigmas == s2.sigmas and len(s1.sigmas) == 5
    assert s1.sigmas[0] == model.sigma_max and s1.sigmas[-1] == pytest.approx(model.sigma_min)
    assert s1.sigmas == tuple(a.teacher_sigmas[i] for i in s1.indices)


def test_distill_matches_search_plus_dp_and_coefficients_share_the_matrix():
    model = small_model()
    g = gits(coeff=1.3)
    result = g.search(model)
    sched = g.distill(model)
    assert sched.indices == tuple(dp_path(result.cost, 5, 1.3))
    for coeff in (0.9, 1.15, 1.3):
        assert g.schedule(result, coeff=coeff).indices == tuple(dp_path(result.cost, 5, coeff))


def test_cond_is_passed_through():
    seen = []

    class Conditioned:
        shape, sigma_min, sigma_max = (2,), 0.002, 80.0

        def __call__(self, x, sigma, cond=None):
            seen.append(cond)
            return x * 0 + (0.0 if cond is None else 0.1)

    gits(num_warmup=4, batch=2).search(Conditioned(), cond=lambda seeds: ("label", seeds))
    assert seen and all(c[0] == "label" and len(c[1]) == 2 for c in seen)
    seen.clear()
    gits(num_warmup=4, batch=4).search(Conditioned(), cond=7)
    assert seen and set(seen) == {7}


# -- the schedule file -------------------------------------------------------------------
@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory):
    model = small_model()
    g = ds.get_distiller("gits", num_warmup=8, teacher_steps=13, num_steps=6, batch=8)
    sched = g.distill(model, model_info={"name": "gmm", "options": SMALL})
    path = tmp_path_factory.mktemp("gits") / "s.json"
    sched.save(path)
    return path, sched


def test_file_round_trips(schedule_file):
    path, sched = schedule_file
    back = load_schedule(path)
    assert back == sched
    data = json.loads(path.read_text())
    assert data["num_steps"] == 6 and data["model"]["name"] == "gmm"
    assert data["settings"]["teacher_steps"] == 13 and data["settings"]["coeff"] == 1.15
    assert data["model"]["spec"] == small_model().spec
    assert ds.get_distiller("gits").load(path) == sched
    assert data["settings"]["labels"] == "none"  # gmm is unconditional


def test_a_file_from_before_labels_were_recorded_still_samples(schedule_file, tmp_path):
    path, sched = schedule_file
    data = json.loads(path.read_text())
    del data["settings"]["labels"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert load_schedule(old).sigmas == sched.sigmas
    model = small_model()
    sigmas = ds.get_schedule("gits", file=str(old)).sigmas(6, model.sigma_min, model.sigma_max, denoiser=model)
    assert sigmas.tolist() == list(sched.sigmas)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_samples_with_the_file(schedule_file, solver):
    path, sched = schedule_file
    model = small_model()
    schedule = ds.get_schedule("gits", file=str(path))
    sigmas = schedule.sigmas(6, model.sigma_min, model.sigma_max, denoiser=model)
    assert sigmas.tolist() == list(sched.sigmas)
    s = ds.get_solver(solver)
    out = s.sample(model, ds.seed_noise(range(3), model.shape) * sigmas[0], sigmas)
    assert out.nfe == s.nfe(6) and torch.isfinite(out.x).all()


def test_compare_row_with_the_file(schedule_file):
    from diffsampler.compare import CompareConfig, run_compare

    path, _ = schedule_file
    config = CompareConfig(model="gmm", model_options=SMALL,
                           solvers=[f"ipndm@gits[file={path}]", "ipndm"],
                           nfes=(4, 5), seeds=(0, 1), metrics=("l2-exact",))
    result = run_compare(config)
    gits_row = result.rows[0]
    assert result.value(gits_row, 5, "l2") >= 0
    # the file holds one step count: at other NFEs the cell is unreachable, the rest runs
    assert result.value(gits_row, 4, "l2") is None
    assert result.value(result.rows[1], 4, "l2") is not None
    assert result.rows == ("ipndm @ gits[file=s.json]", "ipndm @ polynomial[rho=7]")  # files by name


def test_compare_rows_show_paths_where_file_names_collide(schedule_file, tmp_path):
    from diffsampler.compare import CompareConfig, run_compare

    path, _ = schedule_file
    other = tmp_path / "s.json"
    other.write_bytes(path.read_bytes())
    config = CompareConfig(model="gmm", model_options=SMALL, nfes=(5,), seeds=(0,), metrics=("l2-exact",),
                           solvers=[f"ipndm@gits[file={path}]", f"ipndm@gits[file={other}]"])
    assert run_compare(config).rows == (f"ipndm @ gits[file={path}]", f"ipndm @ gits[file={other}]")


def test_file_errors(schedule_file, tmp_path):
    path, sched = schedule_file
    model = small_model()
    schedule = ds.get_schedule("gits", file=str(path))
    with pytest.raises(ds.OptionError, match=r"has 6 sigmas \(5 steps; --steps 6\), but 11"):
        schedule.sigmas(11, model.sigma_min, model.sigma_max)
    with pytest.raises(ds.OptionError, match="spans sigma"):
        schedule.sigmas(6, model.sigma_min, 40.0)
    with pytest.raises(ds.OptionError, match="does not exist"):
        ds.get_schedule("gits", file=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ds.OptionError, match=r"is not a GITS schedule \(JSON written by diffsampler gits search\)"):
        ds.get_schedule("gits", file=str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text(json.dumps({"sigmas": [3, 2, 1]}))
    with pytest.raises(ds.OptionError, match="not a GITS schedule file"):
        ds.get_schedule("gits", file=str(tmp_path / "other.json"))
    data = sched.to_dict()
    data["sigmas"] = [80.0, 90.0, 0.002]
    (tmp_path / "up.json").write_text(json.dumps(data))
    with pytest.raises(ds.OptionError, match="decreasing"):
        ds.get_schedule("gits", file=str(tmp_path / "up.json"))
    with pytest.raises(ds.OptionError, match="needs a schedule file: --schedule-opt file=FILE"):
        ds.get_schedule("gits").sigmas(6, model.sigma_min, model.sigma_max)


def test_wrong_kind_of_file_or_a_folder_is_named(tmp_path):
    binary = tmp_path / "amed.safetensors"
    binary.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}\xac\xff\x00")
    with pytest.raises(ds.OptionError) as info:
        ds.get_schedule("gits", file=str(binary))
    assert str(info.value) == (
        f"{str(binary)!r} is not a GITS schedule (JSON written by diffsampler gits search)"
    )
    with pytest.raises(ds.OptionError, match="is a folder, not a file"):
        ds.get_schedule("gits", file=str(tmp_path))


def test_a_model_of_another_shape_is_refused(schedule_file):
    path, _ = schedule_file
    other = ds.get_model("gmm", shape=(1, 4, 4), components=4)
    schedule = ds.get_schedule("gits", file=str(path))
    with pytest.raises(ds.OptionError) as info:
        schedule.sigmas(6, other.sigma_min, other.sigma_max, denoiser=other)
    message = str(info.value)
    assert "was searched for model 'gmm' (sample shape (3, 4, 4))" in message
    assert "has shape (1, 4, 4): sample with --model gmm --model-opt " in message
    assert "\n" not in message
    model = small_model()  # the searched model itself is fine
    assert schedule.sigmas(6, model.sigma_min, model.sigma_max, denoiser=model).tolist() == list(schedule_file[1].sigmas)


def test_the_afs_setting_of_the_search_is_checked(schedule_file, tmp_path):
    path, sched = schedule_file
    model = small_model()
    plain = ds.get_schedule("gits", file=str(path))
    plain.check(model, sched.sigmas, afs=False)
    with pytest.raises(ds.OptionError, match="searched without AFS: sample without --afs"):
        plain.check(model, sched.sigmas, afs=True)
    afs_file = tmp_path / "afs.json"
    (tmp_path / "afs.json").write_text(json.dumps({**sched.to_dict(), "afs": True}))
    with_afs = ds.get_schedule("gits", file=str(afs_file))
    with pytest.raises(ds.OptionError, match=r"searched with AFS: sample with --afs$"):
        with_afs.check(model, sched.sigmas, afs=False)
    with pytest.raises(ds.OptionError, match=r"searched with AFS: sample with --afs --steps 6 \(6 sigmas\); 5 were"):
        with_afs.sigmas(5, model.sigma_min, model.sigma_max)
    from diffsampler.runs import RunConfig, plan_run

    run = dict(model="gmm", model_options=SMALL, solver="ipndm", schedule="gits", num_steps=6, seeds=(0,))
    with pytest.raises(ds.OptionError, match=r"searched with AFS: sample with --afs$"):  # planning checks it
        plan_run(RunConfig(schedule_options={"file": str(afs_file)}, afs=False, **run))
    assert plan_run(RunConfig(schedule_options={"file": str(afs_file)}, afs=True, **run)).nfe == 4
    # steps and AFS left open: the file's own (5 NFE without AFS, 4 with)
    left_open = {k: v for k, v in run.items() if k != "num_steps"}
    plain_plan = plan_run(RunConfig(schedule_options={"file": str(path)}, **left_open))
    afs_plan = plan_run(RunConfig(schedule_options={"file": str(afs_file)}, **left_open))
    assert (len(plain_plan.sigmas), plain_plan.config.afs, plain_plan.nfe) == (6, False, 5)
    assert (len(afs_plan.sigmas), afs_plan.config.afs, afs_plan.nfe) == (6, True, 4)


def test_save_onto_a_folder_is_one_line_and_leaves_no_temporary(schedule_file, tmp_path):
    _, sched = schedule_file
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(ds.OptionError, match=r"cannot write the GITS schedule file .*: it is a folder"):
        sched.save(target)
    assert list(tmp_path.iterdir()) == [target] and list(target.iterdir()) == []


def test_bad_options_are_clear():
    with pytest.raises(ds.OptionError, match="metric"):
        ds.get_distiller("gits", metric="l3")
    with pytest.raises(ds.OptionError, match="coeff"):
        ds.get_distiller("gits", coeff=0)
    with pytest.raises(ds.OptionError, match="exceeds teacher_steps"):
        gits(num_steps=20).search(small_model())
    with pytest.raises(ds.UnknownComponentError, match="nosuch"):
        gits(teacher="nosuch").search(small_model())
    with pytest.raises(ds.OptionError, match="key=value"):
        ds.get_distiller("gits", teacher_options="max_order")


# -- AFS ---------------------------------------------------------------------------------
@pytest.mark.parametrize("afs_samples", [0, 5])
def test_afs_adds_a_free_first_step_at_the_best_candidate(afs_samples):
    model = small_model()
    g = gits(afs=True, num_steps=4, teacher_steps=21, afs_samples=afs_samples)
    m = afs_samples or 12
    result = g.search(model)
    base = dp_path(result.cost, 4, 1.15)
    sched = g.schedule(result, teacher=model)
    assert len(sched.sigmas) == 5 and sched.afs
    assert sched.indices[0] == 0 and list(sched.indices[2:]) == base[1:]
    scores = {int(k): v for k, v in sched.costs["afs_l2_by_index"].items()}
    assert sorted(scores) == list(range(1, base[1]))
    assert sched.indices[1] == min(scores, key=lambda k: (scores[k], k))
    # independent score of the chosen candidate: mean L2 distance to the teacher's end points
    solver = ds.get_solver("ipndm")
    noise = ds.seed_noise(range(g.options.seed, g.options.seed + m), model.shape, dtype=torch.float64)
    end = solver.sample(model, noise * result.teacher_sigmas[0], list(result.teacher_sigmas)).x
    x = solver.sample(model, noise * sched.sigmas[0], list(sched.sigmas), afs=True)
    assert x.nfe == solver.nfe(4)  # the extra step is free
    l2 = (x.x - end).reshape(m, -1).norm(dim=1).mean().item()
    assert sched.costs["afs_samples"] == m
    assert l2 == pytest.approx(sched.costs["afs_l2"], rel=1e-9)


# -- class labels (the seed: a random class per warm-up trajectory) ------------------------
def seed_rule_labels(seeds, classes):
    """Per-seed labels as ``diffsampler sample --labels random`` draws them, written out."""
    return [int(np.random.default_rng([int(s), 1]).integers(classes)) for s in seeds]


def labelled_cost(model, g, labels):
    """The mean cost matrix with ``labels`` handed to the teacher solver directly."""
    o = g.options
    sigmas = list(g.teacher_sigmas(model))
    seeds = range(o.seed, o.seed + o.num_warmup)
    noise = ds.seed_noise(seeds, model.shape, dtype=torch.float64)
    cond = None if labels is None else torch.tensor(labels)
    traj = g.teacher_solver().sample(model, noise * sigmas[0], sigmas, cond=cond, return_trajectory=True).trajectory
    derivs = torch.stack([(traj[i] - model(traj[i], torch.full((len(seeds),), s, dtype=torch.float64), cond)) / s
                          for i, s in enumerate(sigmas[:-1])])
    return cost_sums(traj, derivs, sigmas, o.metric).numpy() / o.num_warmup


@pytest.fixture(scope="module")
def digits():
    return ds.get_model("digits")


def test_class_conditional_models_get_random_labels_per_seed_by_default(digits):
    base = dict(num_warmup=6, batch=4, teacher_steps=13, num_steps=5)
    g = gits(**base)
    assert g.options.labels == "auto"
    labels = seed_rule_labels(range(g.options.seed, g.options.seed + 6), 10)
    assert len(set(labels)) > 1
    result = g.search(digits)
    assert result.labels == "random"
    np.testing.assert_allclose(result.cost, labelled_cost(digits, g, labels), rtol=1e-5, atol=1e-5)
    sched = g.schedule(result)
    assert sched.indices == tuple(dp_path(labelled_cost(digits, g, labels), 5, 1.15))
    assert sched.settings["labels"] == "random"
    # without labels (the all-zero label vector) the matrix and the schedule differ
    bare = gits(**base, labels="none").search(digits)
    assert bare.labels == "none" and not np.allclose(bare.cost, result.cost, rtol=1e-3)
    np.testing.assert_allclose(bare.cost, labelled_cost(digits, g, None), rtol=1e-5, atol=1e-5)
    assert gits(**base, labels="none").schedule(bare).indices != sched.indices
    # a class index and 'seed' (seed mod classes) are honoured too; the batching does not matter
    fixed = gits(**{**base, "batch": 6}, labels=3).search(digits)
    np.testing.assert_allclose(fixed.cost, labelled_cost(digits, g, [3] * 6), rtol=1e-5, atol=1e-5)
    by_seed = gits(**base, labels="seed").search(digits)
    seeds = range(g.options.seed, g.options.seed + 6)
    np.testing.assert_allclose(by_seed.cost, labelled_cost(digits, g, [s % 10 for s in seeds]), rtol=1e-5, atol=1e-5)


def test_the_afs_search_samples_with_the_searchs_labels(digits):
    g = gits(num_warmup=4, batch=4, teacher_steps=21, num_steps=4, afs=True)
    result = g.search(digits)
    sched = g.schedule(result, teacher=digits)
    labels = torch.tensor(seed_rule_labels(range(g.options.seed, g.options.seed + 4), 10))
    noise = ds.seed_noise(range(g.options.seed, g.options.seed + 4), digits.shape, dtype=torch.float64)
    solver = ds.get_solver("ipndm")
    end = solver.sample(digits, noise * 80.0, list(result.teacher_sigmas), cond=labels).x
    x = solver.sample(digits, noise * 80.0, list(sched.sigmas), cond=labels, afs=True).x
    l2 = (x - end).reshape(4, -1).norm(dim=1).mean().item()
    assert l2 == pytest.approx(sched.costs["afs_l2"], rel=1e-9)


def test_unconditional_models_are_unaffected():
    model = small_model()
    auto, none = gits().search(model), gits(labels="none").search(model)
    np.testing.assert_array_equal(auto.cost, none.cost)
    assert auto.labels == "none" and gits().schedule(auto).settings["labels"] == "none"
    with pytest.raises(ds.OptionError, match="not class-conditional: drop --labels"):
        gits(labels="random").search(model)


class NeedsLabels:
    """A class-conditional model with no unconditional mode (as EDM's ImageNet-64)."""

    shape, sigma_min, sigma_max, label_dim = (2,), 0.002, 80.0, 3

    def __init__(self):
        self.calls = []

    def check_labels(self, choice):
        if choice is None:
            raise ds.OptionError("model 'needs' has no unconditional mode: choose classes with --labels")

    def __call__(self, x, sigma, cond=None):
        self.calls.append(cond)
        return x * 0 + cond.to(x.dtype)[:, None] / 10


def test_a_model_that_needs_labels_refuses_none_before_any_work():
    model = NeedsLabels()
    with pytest.raises(ds.OptionError, match="no unconditional mode"):
        gits(labels="none").search(model)
    assert model.calls == []
    with pytest.raises(ds.OptionError, match="class 5 is out of range"):
        gits(labels="5").search(model)
    assert model.calls == []
    gits(num_warmup=4, batch=4).search(model)
    labels = seed_rule_labels(range(gits().options.seed, gits().options.seed + 4), 3)
    assert model.calls and all(c.tolist() == labels for c in model.calls)


def test_labels_and_cond_are_not_both_given_and_bad_choices_are_named():
    with pytest.raises(ds.OptionError, match="not both"):
        gits(labels="random").search(small_model(), cond=1)
    with pytest.raises(ds.OptionError, match="option labels must be auto, none, random, seed or a class index"):
        gits(labels="any")
