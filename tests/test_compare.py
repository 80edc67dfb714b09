"""Exact testbeds and `diffsampler compare`."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import attrs
import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.compare import CompareConfig, SolverSpec, parse_nfes, run_compare
from diffsampler.images import png_bytes
from diffsampler.plugins.metrics.analytic import frechet_to_moments, top_directions
from diffsampler.plugins.models.empirical import EmpiricalDenoiser
from diffsampler.plugins.models.gmm import GaussianMixture, gmm
from diffsampler.plugins.models.ground_truth import exact_endpoints


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path / "cache"))


def cli(*args: str):
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True,
                          text=True, env=dict(os.environ))


def test_empirical_denoiser_equals_brute_force_posterior_mean():
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, size=(300, 2, 3))
    model = EmpiricalDenoiser(data, chunk=64)  # several chunks: exercises the running softmax
    x = torch.from_numpy(rng.normal(size=(5, 2, 3)))
    for sigma in (0.01, 0.3, 5.0):
        flat, pts = x.reshape(5, -1).numpy(), data.reshape(300, -1)
        logits = -((flat[:, None, :] - pts[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = np.exp(logits - logits.max(1, keepdims=True))
        expected = (w / w.sum(1, keepdims=True)) @ pts
        got = model(x, torch.full((5,), sigma, dtype=torch.float64)).reshape(5, -1).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_empirical_digits_default_and_data_errors(tmp_path):
    model = ds.get_model("empirical")
    assert model.shape == (1, 8, 8) and len(model.points) == 1797
    assert model.points.min() == -1 and model.points.max() == 1
    with pytest.raises(ds.OptionError, match="no such file"):
        ds.get_model("empirical", data=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ds.OptionError, match="holds no PNG images"):
        ds.get_model("empirical", data=str(empty))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    (mixed / "b.png").write_bytes(png_bytes(np.zeros((9, 8, 3), np.uint8)))
    with pytest.raises(ds.OptionError, match="image of shape"):
        ds.get_model("empirical", data=str(mixed))
    folder = tmp_path / "ok"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.png").write_bytes(png_bytes(np.full((4, 4, 3), 60 * k, np.uint8)))
    from_folder = ds.get_model("empirical", data=str(folder))
    assert from_folder.shape == (3, 4, 4)
    np.testing.assert_allclose(from_folder.points[1], 60 / 127.5 - 1)


def test_ground_truth_matches_the_closed_form_single_gaussian_flow():
    """One Gaussian N(mu, s^2 I): the ODE solution is x(sigma) = mu + (x - mu) r(sigma)."""
    mu, s = np.array([0.3, -0.2, 0.5]), 0.4
    model = GaussianMixture(mu[None], np.array([s]), np.array([1.0]), sigma_min=0.01, sigma_max=20.0,
                            spec={"test": "single-gaussian"})
    truth = exact_endpoints(model, [0, 1, 2])
    x0 = ds.seed_noise([0, 1, 2], (3,), dtype=torch.float64).numpy() * 20.0
    exact = mu + (x0 - mu) * np.sqrt(s**2 + 0.01**2) / np.sqrt(s**2 + 20.0**2)
    np.testing.assert_allclose(truth.endpoints, exact, atol=1e-8)
    assert truth.accuracy < 1e-6


def test_ground_truth_is_cached_per_seed_and_independent_of_the_other_seeds(tmp_path):
    model = gmm(shape=(4,), components=3, spread=0.3, seed=2)
    both = exact_endpoints(model, [3, 7])
    assert len(list((tmp_path / "cache" / "ground-truth").rglob("seed-*.npz"))) == 2
    alone = exact_endpoints(model, [7], cache=False)
    assert np.array_equal(both.endpoints[1], alone.endpoints[0])
    other = gmm(shape=(4,), components=3, spread=0.3, seed=3)  # another spec, another key
    exact_endpoints(other, [3])
    assert len(list((tmp_path / "cache" / "ground-truth").iterdir())) == 2


def test_frechet_distance_low_rank_formula_matches_scipy_sqrtm():
    from scipy import linalg

    rng = np.random.default_rng(1)
    d = 12
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d
    mean = rng.normal(size=d)
    for n in (5, 40):  # rank-deficient and full-rank sample covariances
        x = rng.normal(size=(n, d))
        s1 = np.cov(x.T)
        root = linalg.sqrtm(s1 @ cov).real
        expected = ((x.mean(0) - mean) ** 2).sum() + np.trace(s1) + np.trace(cov) - 2 * np.trace(root)
        assert frechet_to_moments(x, mean, cov) == pytest.approx(expected, rel=1e-7, abs=1e-8)


def test_top_directions_span_the_leading_eigenspace():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    values = np.concatenate([[50, 40, 30], np.ones(27) * 0.1])
    cov = (q * values) @ q.T
    basis = top_directions(cov, 3)
    np.testing.assert_allclose(np.sort(np.diag(basis.T @ cov @ basis)), [30, 40, 50], rtol=1e-8)


def test_errors_fall_with_nfe_for_high_order_solvers():
    config = CompareConfig(
        model="gmm", model_options={"shape": (6,), "components": 4, "spread": 0.3, "seed": 5},
        solvers=[SolverSpec(solver="ipndm"), SolverSpec(solver="dpmpp"), SolverSpec(solver="unipc")],
        nfes=(10, 20, 40, 80), seeds=range(6), metrics=("l2-exact",),
    )
    result = run_compare(config)
    for row in result.rows:
        errors = [result.value(row, n, "l2") for n in config.nfes]
        assert all(b < a for a, b in itertools.pairwise(errors)), (row, errors)
        # past the first doublings the error falls at least like NFE^-2 (these are order >= 2)
        assert errors[-1] < errors[1] / 16, (row, errors)


def test_the_same_cell_twice_gives_the_same_number():
    config = CompareConfig(model_options={"shape": (3, 8, 8)}, solvers=["euler", "heun"],
                           nfes=(3, 4), seeds=range(4))
    a, b = run_compare(config), run_compare(config)
    assert [c.values for c in a.cells] == [c.values for c in b.cells]
    assert a.value("heun @ polynomial[rho=7]", 3, "l2") is None  # 2 NFE per step: unreachable
    assert a.reference["l2"] == 0.0 and a.reference["fd"] > 0


def test_compare_input_errors():
    with pytest.raises(ds.OptionError, match="NFE 3 is not reachable by any solver"):
        run_compare(CompareConfig(solvers=["heun"], nfes=(3,), seeds=(0,)))
    with pytest.raises(ds.UnknownComponentError, match="unknown solver 'ipnd'"):
        run_compare(CompareConfig(solvers=["ipnd"], nfes=(3,), seeds=(0,)))
    with pytest.raises(ds.UnknownComponentError, match="unknown metric"):
        run_compare(CompareConfig(metrics=("fid-nope",), nfes=(3,), seeds=(0,)))
    with pytest.raises(ds.OptionError, match="bad solver spec"):
        SolverSpec.parse("ipndm[max_order=3")
    assert SolverSpec.parse("dpmpp[max_order=2]@logsnr").label == "dpmpp[max_order=2]@logsnr"
    assert parse_nfes("3-5,8") == (3, 4, 5, 8)
    with pytest.raises(ds.OptionError, match=r"has the row 'euler @ polynomial\[rho=7\]' twice"):
        run_compare(CompareConfig(solvers=("euler", "euler@polynomial[rho=7]"), nfes=(3,), seeds=(0,)))
    with pytest.raises(ds.OptionError, match="in '10-3' the end is below the start"):
        parse_nfes("10-3")


def test_compare_cli_writes_tables_and_reproduces_from_its_config(tmp_path):
    out = tmp_path / "cmp"
    args = ("compare", "--model-opt", "shape=3x8x8", "--solver", "euler", "--solver", "ipndm[max_order=2]",
            "--nfe", "3-5", "--seeds", "0-5")
    proc = cli(*args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "ipndm[max_order=2] @ polynomial[rho=7]" in proc.stdout and "NFE 5" in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.csv", "plot.png"}
    first = json.loads((out / "results.json").read_text())
    again = cli("compare", "--config", str(out / "results.json"), "--out", str(tmp_path / "again"), "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert [c["values"] for c in first["cells"]] == [c["values"] for c in second["cells"]]
    bad = cli("compare", "--solver", "heun", "--nfe", "3", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "NFE 3 is not reachable by any solver" in bad.stderr


def test_gmm_spec_saves_and_loads_the_same_problem(tmp_path):
    model = gmm(shape=(5,), components=3, spread=0.2, seed=11)
    model.save_spec(tmp_path / "problem.json")
    again = ds.get_model(str(tmp_path / "problem.json"))
    assert np.array_equal(again.means, model.means) and np.array_equal(again.stds, model.stds)
    assert again.spec == model.spec
    (tmp_path / "bad.json").write_text('{"model": "gmm", "components": 0}')
    with pytest.raises(ds.ModelLoadError, match="gmm spec"):
        ds.get_model(str(tmp_path / "bad.json"))
    result = run_compare(CompareConfig(model=str(tmp_path / "problem.json"), solvers=["euler"],
                                       nfes=(3,), seeds=range(2)))
    assert result.to_dict()["model_spec"] == model.spec


def test_metric_options_in_compare():
    from diffsampler.compare import parse_metric

    assert parse_metric("fid[ref=a.npz,device=cuda]") == ("fid", {"ref": "a.npz", "device": "cuda"})
    with pytest.raises(ds.OptionError, match="bad metric spec"):
        parse_metric("fid[ref=a")
    base = CompareConfig(model_options={"shape": (3, 8, 8)}, solvers=["euler"], nfes=(4,), seeds=range(6))
    full = run_compare(attrs.evolve(base, metrics=("fd-exact[dims=0]",)))
    top4 = run_compare(attrs.evolve(base, metrics=("fd-exact[dims=4]",)))
    x = full.cells[0].values["fd"], top4.cells[0].values["fd"]
    assert x[0] > x[1] > 0  # all 192 dimensions carry more distance than the top 4
    with pytest.raises(ds.OptionError, match="has no option 'dim'"):
        run_compare(attrs.evolve(base, metrics=("fd-exact[dim=4]",)))


def test_teacher_metric_for_models_without_an_exact_solution():
    base = CompareConfig(model_options={"shape": (3, 8, 8)}, solvers=["euler", "heun"], nfes=(4, 10),
                         seeds=range(4))
    both = run_compare(attrs.evolve(base, metrics=("l2-exact", "l2-teacher[teacher_steps=201]")))
    for cell in both.cells:
        if cell.values is not None:  # a fine Heun run is as good as the exact endpoint here
            assert cell.values["l2_teacher"] == pytest.approx(cell.values["l2"], rel=2e-3, abs=1e-6)
    # the teacher's own configuration measures zero against itself
    same = run_compare(attrs.evolve(base, solvers=["heun@polynomial[rho=7]"], nfes=(10,),
                                    metrics=("l2-teacher[teacher_steps=6]",)))
    assert same.cells[0].values["l2_teacher"] == 0.0


def test_an_interrupted_comparison_keeps_its_finished_cells(tmp_path):
    from diffsampler.compare import CompareInterrupted

    seen = []

    def stop_after_two(cell):
        seen.append(cell)
        if len(seen) == 2:
            raise KeyboardInterrupt

    config = CompareConfig(model_options={"shape": (3, 8, 8)}, solvers=("euler", "heun"), nfes=(3, 4, 5),
                           seeds=(0, 1), metrics=("l2-exact",))
    with pytest.raises(CompareInterrupted) as stop:
        run_compare(config, on_cell=stop_after_two)
    partial = stop.value.partial
    assert not partial.complete and partial.to_dict()["complete"] is False
    assert [c.values for c in partial.cells] == [c.values for c in seen]
    full = {(c.row, c.nfe): c.values for c in run_compare(config).cells}
    assert all(full[(c.row, c.nfe)] == c.values for c in partial.cells)


def test_compare_config_refuses_other_flags_and_foreign_files(tmp_path):
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    proc = cli("compare", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "is not a comparison configuration" in proc.stderr
    proc = cli("compare", "--config", str(bad), "--nfe", "4", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "drop --nfe" in proc.stderr


def test_metrics_where_higher_is_better_mark_the_largest_value():
    import types

    from diffsampler.registry import discover

    class Score:
        """Minus the RMS distance to the exact endpoints (higher is better)."""

        higher_is_better = True

        def compute(self, batches, *, model=None, seeds=None):
            rms = ds.get_metric("l2-exact").compute(batches, model=model, seeds=seeds)["l2"]
            return {"score": -rms}

    @ds.hookimpl
    def register_metrics(register):
        register("score", Score)

    ds.reset_registry(discover(entry_points=True, plugins=[("t", types.SimpleNamespace(register_metrics=register_metrics))]))
    try:
        config = CompareConfig(model_options={"shape": (2,)}, solvers=("euler", "heun"), nfes=(6,), seeds=(0, 1, 2),
                               metrics=("score", "l2-exact"))
        result = run_compare(config)
    finally:
        ds.reset_registry(None)
    assert result.higher_is_better == ("score",) and result.to_dict()["higher_is_better"] == ["score"]
    scores = {row: result.value(row, 6, "score") for row in result.rows}
    errors = {row: result.value(row, 6, "l2") for row in result.rows}
    assert result.best(6, "score") == max(scores.values()) and result.best(6, "l2") == min(errors.values())
    assert max(scores, key=scores.get) == min(errors, key=errors.get)  # the same winner either way


def test_compare_labels_reach_the_samples_and_the_teacher():
    config = CompareConfig(model="digits", solvers=("euler",), nfes=(4,), seeds=(0, 1, 2), labels="random",
                           metrics=("l2-teacher[teacher_steps=5,teacher=euler]",), batch=3, dtype="float32")
    result = run_compare(config)
    # a 5-sigma Euler run IS the teacher here, so with the same labels the error is 0
    assert result.value(result.rows[0], 4, "l2_teacher") == 0.0
    assert result.to_dict()["config"]["labels"] == "random"
    # ... and the classes matter: the teacher's run differs without them
    from diffsampler.plugins.metrics.analytic import TeacherEndpointError
    from diffsampler.runs import labels_for

    model, teacher = ds.get_model("digits"), TeacherEndpointError(teacher="euler", teacher_steps=5)
    classes = labels_for("random", model, (0, 1, 2), model_name="digits")
    assert abs(teacher.reference(model, (0, 1, 2), torch.float32, classes)
               - teacher.reference(model, (0, 1, 2), torch.float32)).max() > 0.1
    with pytest.raises(ds.OptionError, match="class 12 is out of range"):
        run_compare(attrs.evolve(config, labels="12"))


def test_sigterm_and_an_interruption_before_any_cell_keep_what_there_is(tmp_path):
    from diffsampler.cli._common import Terminated, exit_status
    from diffsampler.cli.compare_cmd import _write
    from diffsampler.compare import CompareInterrupted

    def terminate(cell):
        raise Terminated(15)

    config = CompareConfig(model_options={"shape": (2,)}, solvers=("euler",), nfes=(3, 4), seeds=(0,),
                           metrics=("l2-exact",))
    with pytest.raises(CompareInterrupted) as stop:
        run_compare(config, on_cell=terminate)
    assert exit_status(stop.value) == 143 and len(stop.value.partial.cells) == 1
    empty = attrs.evolve(stop.value.partial, cells=(), rows=())
    (tmp_path / "plot.png").write_bytes(b"an older plot")
    assert _write(tmp_path, empty) == ["results.json", "results.csv"]  # no plot of nothing, no stale one
    assert not (tmp_path / "plot.png").exists()
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is False


def test_a_rerun_of_an_interrupted_comparison_keeps_its_finished_cells(tmp_path):
    """The same comparison into the same --out measures only the cells it had not finished; another
    comparison, or a complete one, starts afresh."""
    args = ["compare", "--solver", "euler", "--solver", "heun", "--nfe", "4,6", "--seeds", "0-1",
            "--metric", "l2-exact", "--out", str(tmp_path), "--json"]
    proc = cli(*args)
    assert proc.returncode == 0 and "resuming" not in proc.stderr
    full = json.loads(proc.stdout)
    fresh = {(c["row"], c["nfe"]): c["values"]["l2"] for c in full["cells"]}
    # as an interruption after two cells leaves it (one value marked: was it kept or measured?)
    partial = dict(full, complete=False, cells=full["cells"][:2])
    partial["cells"][0] = dict(partial["cells"][0], values={"l2": 123.0})
    marked = (partial["cells"][0]["row"], partial["cells"][0]["nfe"])
    (tmp_path / "results.json").write_text(json.dumps(partial))
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "resuming the interrupted comparison" in said and "2 finished cells kept" in said
    result = json.loads(proc.stdout)
    assert result["complete"] is True and len(result["cells"]) == 4
    by_cell = {(c["row"], c["nfe"]): c["values"]["l2"] for c in result["cells"]}
    assert by_cell.pop(marked) == 123.0
    assert by_cell == {key: pytest.approx(value) for key, value in fresh.items() if key != marked}
    # complete now: a rerun measures everything again
    proc = cli(*args)
    assert "resuming" not in proc.stderr
    assert {(c["row"], c["nfe"]): c["values"]["l2"] for c in json.loads(proc.stdout)["cells"]}[marked] != 123.0
    # another comparison into the folder does not reuse an interrupted one's cells
    (tmp_path / "results.json").write_text(json.dumps(partial))
    other = [a if a != "0-1" else "0-2" for a in args]
    proc = cli(*other)
    assert proc.returncode == 0 and "resuming" not in proc.stderr
    assert 123.0 not in [c["values"]["l2"] for c in json.loads(proc.stdout)["cells"]]


def test_a_hand_edited_interrupted_results_file_is_measured_afresh():
    from diffsampler.compare import finished_cells

    config = CompareConfig(model_options={"shape": (2,)}, solvers=("euler",), nfes=(4,), seeds=(0,),
                           metrics=("l2-exact",))
    good = {"row": "euler @ polynomial[rho=7]", "nfe": 4, "num_steps": 5, "values": {"l2": 0.1}, "seconds": 0.1}
    saved = {"config": config.to_dict(), "complete": False, "cells": [good]}
    assert [c.values for c in finished_cells(saved, config)] == [{"l2": 0.1}]
    for bad in ({"values": "abc"}, {"nfe": [4]}, {"values": {"l2": "x"}}, {"nfe": True}, {"row": 3}):
        assert finished_cells(dict(saved, cells=[{**good, **bad}]), config) == []
    assert finished_cells(dict(saved, cells="oops"), config) == []
    assert finished_cells(dict(saved, complete=True), config) == []
