"""SFD's class labels (``labels``: auto, none, random, seed, K; the model option ``class_label``),
its recording in the student, and the second stage's noise range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sfd import trainer
from test_sfd_v import conditional_teacher
from typer.testing import CliRunner

import diffsampler as ds
from diffsampler.cli import build_app
from diffsampler.errors import OptionError
from diffsampler.runs import RunConfig, plan_run

NO_DROPOUT = r"^model 'tiny-cond' is class-conditional and was trained without label dropout"


def batch_seeds(tr, iteration: int = 0) -> list[int]:
    o = tr.options
    return list(range(o.seed + iteration * o.batch, o.seed + (iteration + 1) * o.batch))


# -- the labels choice ---------------------------------------------------------------------------
def test_auto_is_random_per_seed_for_a_conditional_teacher_and_none_otherwise():
    tr = trainer(conditional_teacher())
    assert tr.options.labels == "random"
    # the draw of `sample --labels random` (and of the earlier SFD): default_rng([seed, 1])
    drawn = [int(np.random.default_rng([s, 1]).integers(3)) for s in batch_seeds(tr, 1)]
    assert tr.labels(1).tolist() == drawn
    from test_sfd import tiny_teacher

    unconditional = trainer(tiny_teacher())
    assert unconditional.options.labels == "none" and unconditional.labels(0) is None


def test_none_is_refused_on_a_network_without_label_dropout():
    with pytest.raises(OptionError, match=NO_DROPOUT):
        trainer(conditional_teacher(), labels="none")
    assert trainer(conditional_teacher(label_dropout=0.1), labels="none").labels(0) is None


def test_seed_and_a_class_index_are_accepted():
    tr = trainer(conditional_teacher(), labels="seed")
    assert tr.labels(0).tolist() == [s % 3 for s in batch_seeds(tr)]
    assert trainer(conditional_teacher(), labels="2").labels(0).tolist() == [2] * 8
    with pytest.raises(OptionError, match="class 3 is out of range"):
        trainer(conditional_teacher(), labels="3")
    with pytest.raises(OptionError, match="auto, none, random, seed or a class index"):
        trainer(conditional_teacher(), labels="rand")


def test_a_model_class_label_is_trained_on_and_sampled_with(tmp_path):
    """``--model-opt class_label=2``: every trajectory is class 2 (auto, and none too), recorded
    as ``labels: "2"`` so that ``sample --model student.json`` samples class 2."""
    for choice in ("auto", "none"):
        tr = trainer(conditional_teacher(class_label=2), labels=choice)
        assert tr.options.labels == "2" and tr.labels(0).tolist() == [2] * 8
    # an explicit --labels wins over class_label, as in sample and the other distillers
    assert trainer(conditional_teacher(class_label=2), labels="random").options.labels == "random"
    tr.step()
    path = tr.result().save(tmp_path / "k.json")
    assert json.loads(path.read_text())["settings"]["labels"] == "2"
    assert ds.get_model(str(path)).sampling_defaults["labels"] == "2"
    assert plan_run(RunConfig(model=str(path), seeds=(0, 1))).config.labels == "2"
    assert "labels" not in ds.get_model(str(path), class_label=0).sampling_defaults


@pytest.mark.parametrize(("recorded", "sampled"), [("random", "random"), ("none", None)])
def test_students_saved_before_sample_as_before(tmp_path, recorded, sampled):
    """Students written before ``labels`` had ``auto`` recorded ``random`` or ``none``."""
    tr = trainer(conditional_teacher(label_dropout=0.1), labels=recorded)
    path = tr.result().save(tmp_path / "old.json")
    data = json.loads(path.read_text())
    assert data["settings"]["labels"] == recorded
    assert plan_run(RunConfig(model=str(path), seeds=(0, 1))).config.labels == sampled


def test_an_earlier_checkpoint_resumes_under_auto(tmp_path):
    """A checkpoint written with ``labels: random`` (the earlier default) resumes with the default."""
    old = trainer(conditional_teacher(), labels="random")
    old.step()
    old.save_checkpoint(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["options"]["labels"] == "random"
    new = trainer(conditional_teacher())
    new.load_checkpoint(tmp_path / "ck")
    assert new.iteration == 1


def test_cli_refuses_none_in_one_line_and_records_class_label(tmp_path):
    from diffsampler.plugins.edm.checkpoint import save_network

    teacher = save_network(conditional_teacher().net, tmp_path / "cond")
    runner = CliRunner()
    base = ["sfd", "train", "--model", str(teacher), "--batch", "4", "--total-kimg", "0.004", "--M", "1",
            "--device", "cpu", "--threads", "1"]
    proc = subprocess.run([sys.executable, "-m", "diffsampler", *base, "--labels", "none", "--out",
                           str(tmp_path / "n.json")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("error: model 'cond' is class-conditional and was trained without label dropout "
                                   "(no unconditional mode): choose classes with --labels random|seed|K or the "
                                   "model option class_label")
    assert not (tmp_path / "n.json").exists() and not (tmp_path / "n.safetensors").exists()
    out = tmp_path / "k.json"
    res = runner.invoke(build_app(), [*base, "--model-opt", "class_label=1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["settings"]["labels"] == "1"
    samples = tmp_path / "s"
    res = runner.invoke(build_app(), ["sample", "--model", str(out), "--seeds", "0-1", "--out", str(samples)])
    assert res.exit_code == 0, res.output
    assert json.loads((samples / "config.json").read_text())["config"]["labels"] == "1"


# -- the second stage ---------------------------------------------------------------------------
def stage1(tmp_path: Path, teacher=None):
    tr = trainer(teacher, num_steps=5, M=1)
    tr.step()
    return ds.get_model(str(tr.result().save(tmp_path / "s1.json")))


STAGE2 = dict(num_steps=3, M=1, teacher="euler", teacher_options="", teacher_afs=True, lpips=0)


def test_second_stage_keeps_the_labels_of_its_student_teacher(tmp_path):
    teacher = stage1(tmp_path, conditional_teacher(class_label=2))
    assert teacher.class_label is None and teacher.settings["labels"] == "2"
    assert trainer(teacher, **STAGE2).options.labels == "2"


def test_second_stage_with_another_sigma_range_says_to_drop_it(tmp_path):
    teacher = stage1(tmp_path)
    assert (teacher.sigma_min, teacher.sigma_max) == (0.006, 80.0)
    for flag, opts in (("--sigma-min", {"sigma_min": 0.02}), ("--sigma-max", {"sigma_max": 60.0}),
                       ("--sigma-min/--sigma-max", {"sigma_min": 0.002, "sigma_max": 100.0})):
        with pytest.raises(OptionError, match=rf"trained on \(0\.006\.\.80\).*: drop {flag}$"):
            trainer(teacher, **STAGE2, **opts)
    tr = trainer(teacher, **STAGE2, sigma_min=0.006, sigma_max=80.0)  # its own range: fine
    assert (tr.sigma_min, tr.sigma_max) == (0.006, 80.0)


def test_second_stage_grid_mismatch_names_what_differs(tmp_path):
    from diffsampler.plugins.sfd.trainer import _grid_mismatch

    teacher = stage1(tmp_path)
    with pytest.raises(OptionError, match="pick M and num_steps"):
        trainer(teacher, **{**STAGE2, "M": 2})  # 7 sigmas: not one it was trained on
    with pytest.raises(OptionError, match=r"5 sigmas 0\.006\.\.80; .* spaced differently: use its rho \(--rho 7\)"):
        trainer(teacher, **STAGE2, rho=5.0)  # same count and range
    other = ds.get_schedule("polynomial").sigmas(5, 0.02, 80.0).tolist()
    message = _grid_mismatch(teacher, teacher.sigmas, other)
    assert "5 sigmas 0.006..80; this run's teacher grid spans 0.02..80" in message
    assert "M and num_steps" not in message


# -- one wording for an empty range --------------------------------------------------------------
def test_one_wording_for_sigma_min_above_sigma_max():
    with pytest.raises(OptionError, match=r"sigma_min \(100\) must be below sigma_max \(80\)$"):
        trainer(sigma_min=100.0)
    with pytest.raises(Exception, match=r"sigma_min \(5\) must be below sigma_max \(2\)$"):
        ds.get_distiller("sfd", sigma_min=5.0, sigma_max=2.0)


def test_labels_do_not_change_an_unconditional_run():
    """The default on an unconditional teacher trains exactly as ``labels=none``."""
    from test_sfd import tiny_teacher

    a, b = trainer(tiny_teacher()), trainer(tiny_teacher(), labels="none")
    a.step()
    b.step()
    for k, v in a.student.net.state_dict().items():
        assert torch.equal(v, b.student.net.state_dict()[k])


# -- the sfd solver (a student in place of its teacher) -------------------------------------------
def test_the_sfd_solver_samples_its_student_as_trained(tmp_path):
    """``sample --model TEACHER --solver sfd[student=F]`` takes the student's steps, AFS and
    labels where the command leaves them open, and ``compare`` warns when it samples otherwise."""
    import warnings

    from diffsampler.compare import _warn_other_labels
    from diffsampler.plugins.edm.checkpoint import save_network

    teacher = conditional_teacher(label_dropout=0.1)
    tr = trainer(teacher, num_steps=5)
    tr.step()
    path = str(tr.result().save(tmp_path / "r.json"))
    solver = ds.get_solver("sfd", student=path)
    assert solver.sampling_defaults == {"num_steps": 5, "afs": True, "labels": "random"}
    net = str(save_network(teacher.net, tmp_path / "t"))
    config = plan_run(RunConfig(model=net, solver="sfd", solver_options={"student": path}, seeds=(0, 1))).config
    assert (config.labels, config.afs, config.num_steps) == ("random", True, 5)
    asked = plan_run(RunConfig(model=net, solver="sfd", solver_options={"student": path}, seeds=(0, 1),
                               labels="seed")).config
    assert asked.labels == "seed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_other_labels("sfd", (solver,), None)
        _warn_other_labels("sfd", (solver,), "random")
    assert [str(w.message) for w in caught] == [
        "row sfd was trained with labels=random; this comparison samples without labels "
        "(--labels random samples it as trained)"]
    none = trainer(teacher, num_steps=5, labels="none").result().save(tmp_path / "n.json")
    assert "labels" not in ds.get_solver("sfd", student=str(none)).sampling_defaults
