"""SFD-v (one student for several step counts), class labels for conditional teachers, and the
second stage's LPIPS term."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from test_sfd import TINY, params, tiny_teacher, trainer
from typer.testing import CliRunner

import diffsampler as ds
from diffsampler.cli import build_app
from diffsampler.errors import ModelLoadError, OptionError
from diffsampler.plugins.edm.denoiser import EDMDenoiser
from diffsampler.plugins.edm.layers import UNetBlock
from diffsampler.plugins.edm.precond import EDMPrecond


def step_keys(net: torch.nn.Module) -> set[str]:
    return {k for k in net.state_dict() if "map_step" in k or "affine_step" in k}


# -- the network's step condition -------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_step_layers_are_the_seeds_and_a_zero_step_embedding_is_the_plain_network(model_type):
    kwargs = dict(img_resolution=8, img_channels=1, model_type=model_type, **TINY)
    torch.manual_seed(0)
    plain = EDMPrecond(**kwargs)
    torch.manual_seed(1)
    stepped = EDMPrecond(**kwargs, step_condition=True)
    blocks = [name for name, m in stepped.named_modules() if isinstance(m, UNetBlock)]
    expected = {f"model.map_step_layer{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    expected |= {f"{b}.affine_step.{p}" for b in blocks for p in ("weight", "bias")}
    assert step_keys(stepped) == expected
    assert set(stepped.state_dict()) - expected == set(plain.state_dict())
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stepped.load_state_dict({**stepped.state_dict(), **plain.state_dict()})
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.5, 2.0, 10.0])
    steps = torch.tensor([4.0, 5.0, 6.0])
    with torch.no_grad():
        differs = stepped(x, sigma, step_condition=steps)
        assert not torch.allclose(differs, plain(x, sigma))
        assert not torch.allclose(stepped(x, sigma, step_condition=steps + 1), differs)
        # silu(0) = 0 and zero affine_step biases: the step embedding then changes nothing
        for name, p in stepped.named_parameters():
            if "map_step_layer1" in name or "affine_step.bias" in name:
                p.zero_()
        torch.testing.assert_close(stepped(x, sigma, step_condition=steps), plain(x, sigma), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no step condition"):
        plain(x, sigma, step_condition=steps)


def test_the_step_shift_enters_like_the_noise_shift():
    """Without adaptive scale the block adds ``affine_step(e)`` exactly where ``affine(emb)`` goes:
    the same as a block whose ``affine`` bias carries the step's shift."""
    torch.manual_seed(0)
    block = UNetBlock(in_channels=8, out_channels=8, emb_channels=16, adaptive_scale=False, step_condition=True)
    plain = UNetBlock(in_channels=8, out_channels=8, emb_channels=16, adaptive_scale=False)
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if "affine_step" not in k})
    x, emb, e = torch.randn(1, 8, 4, 4), torch.randn(1, 16), torch.randn(1, 16)
    with torch.no_grad():
        plain.affine.bias.add_(block.affine_step(e)[0])
        torch.testing.assert_close(block(x, emb, e), plain(x, emb), rtol=1e-5, atol=1e-6)


# -- SFD-v training --------------------------------------------------------------------------
def test_sfdv_student_adds_step_layers_to_the_teachers_weights_and_draws_steps_per_batch():
    teacher = tiny_teacher()
    tr = trainer(teacher, step_condition=True, min_steps=3, max_steps=5, num_steps=4, total_kimg=0.08)
    student = tr.student.net.state_dict()
    for k, v in teacher.net.state_dict().items():
        assert torch.equal(student[k], v)
    assert step_keys(tr.student.net)
    draws = [tr.steps_at(k) for k in range(40)]
    assert set(draws) == {3, 4, 5}
    assert draws == [tr.steps_at(k) for k in range(40)]  # a function of (seed, iteration) only
    again = trainer(tiny_teacher(), step_condition=True, min_steps=3, max_steps=5, num_steps=4, total_kimg=0.08)
    assert all(torch.equal(again.student.net.state_dict()[k], v) for k, v in student.items())  # seeded init
    record = tr.step()
    assert record["steps"] == draws[0] and f"loss{draws[0] - 2}" in record


def test_sfdv_num_steps_must_be_in_range():
    with pytest.raises(OptionError, match="min_steps"):
        ds.get_distiller("sfd", step_condition=True, num_steps=9)
    with pytest.raises(OptionError, match="must not exceed"):
        ds.get_distiller("sfd", step_condition=True, min_steps=6, max_steps=5, num_steps=5)


def test_sfdv_resume_is_bit_identical(tmp_path):
    opts = dict(step_condition=True, min_steps=3, max_steps=5, num_steps=3, total_kimg=0.032, lr=1e-3)
    straight = trainer(tiny_teacher(), **opts)
    straight.train()
    first = trainer(tiny_teacher(), **opts)
    first.train(stop_after=2, checkpoint=tmp_path / "ck")
    resumed = trainer(tiny_teacher(), **opts)
    resumed.load_checkpoint(tmp_path / "ck")
    resumed.train()
    assert resumed.history == straight.history
    for k, v in params(straight.student.net).items():
        assert torch.equal(resumed.student.net.state_dict()[k], v), k


def test_sfdv_student_serves_each_trained_step_count(tmp_path):
    tr = trainer(tiny_teacher(), step_condition=True, min_steps=3, max_steps=5, num_steps=4, lr=1e-3)
    tr.train()
    path = tr.result().save(tmp_path / "v.json")
    model = ds.get_model(str(path))
    assert (model.num_steps, model.step_condition, sorted(model.sigma_table)) == (4, 4, [3, 4, 5])
    x = tr.noise(0)
    for n in (3, 5):
        served = ds.get_model(str(path), steps=n)
        sigmas = ds.get_schedule("sfd").sigmas(n, served.sigma_min, served.sigma_max, denoiser=served)
        torch.testing.assert_close(sigmas, torch.tensor(tr.grid(n)[0], dtype=torch.float64), rtol=1e-12, atol=0)
        with torch.no_grad():
            run = ds.get_solver("euler").sample(served, x, sigmas, afs=True)
            cur = x
            for i in range(n - 1):
                cur = tr.student_step(cur, i, num_steps=n)
        torch.testing.assert_close(run.x, cur)  # the step condition is the one trained with
    with pytest.raises(OptionError, match="--model-opt steps=5"):
        ds.get_schedule("sfd").sigmas(5, model.sigma_min, model.sigma_max, denoiser=model)
    with pytest.raises(OptionError, match="trained for 3, 4, 5 sigmas, not 7"):
        ds.get_model(str(path), steps=7)
    with pytest.raises(OptionError, match="3 or 4 or 5 sigmas"):
        ds.get_schedule("sfd", file=str(path)).sigmas(6, model.sigma_min, model.sigma_max)


def test_cli_sfdv_train_and_sample(tmp_path):
    runner = CliRunner()
    out = tmp_path / "v.json"
    res = runner.invoke(build_app(), [
        "sfd", "train", "--model", "digits", "--out", str(out), "--batch", "4", "--total-kimg", "0.008", "--M", "1",
        "--step-condition", "--min-steps", "4", "--max-steps", "5", "--labels", "none", "--log-every", "1",
        "--device", "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "sigmas)" in res.output and "--model-opt steps=4" in res.output
    res = runner.invoke(build_app(), ["sample", "--model", str(out), "--model-opt", "steps=5", "--solver", "euler",
                                      "--schedule", "sfd", "--steps", "5", "--afs", "--seeds", "0-1",
                                      "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(build_app(), ["sample", "--model", str(out), "--solver", "euler", "--schedule", "sfd",
                                      "--steps", "5", "--afs", "--seeds", "0-1", "--out", str(tmp_path / "t")])
    assert isinstance(res.exception, OptionError) and "--model-opt steps=5" in str(res.exception)


# -- class labels ----------------------------------------------------------------------------
def conditional_teacher(label_dropout: float = 0.0, class_label: int | None = None) -> EDMDenoiser:
    """A class-conditional tiny network; without label dropout it has no unconditional mode."""
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=1, label_dim=3, model_type="SongUNet",
                     label_dropout=label_dropout, **TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return EDMDenoiser(net, name="tiny-cond", class_label=class_label)


def test_conditional_teacher_gets_a_random_class_per_trajectory():
    tr = trainer(conditional_teacher())
    labels = tr.labels(0)
    assert labels.shape == (8,) and labels.min() >= 0 and labels.max() < 3 and len(set(labels.tolist())) > 1
    assert torch.equal(tr.labels(0), labels) and not torch.equal(tr.labels(1), labels)
    x = tr.noise(0)
    targets = tr.teacher_targets(x, labels=labels)
    with torch.no_grad():
        seeds = ds.get_solver("dpmpp", max_order=3, thresholding="dynamic")  # the seed's teacher
        end = seeds.sample(tr.teacher, x, tr.teacher_sigmas, cond=labels).x
        plain = seeds.sample(tr.teacher, x, tr.teacher_sigmas).x
    torch.testing.assert_close(targets[-1], end)
    assert not torch.allclose(end, plain)
    assert trainer(conditional_teacher(label_dropout=0.1), labels="none").labels(0) is None
    assert trainer(tiny_teacher()).labels(0) is None  # unconditional teacher


# -- LPIPS in the second stage ---------------------------------------------------------------
def small_lpips():
    from diffsampler.plugins.sfd.lpips import LPIPS

    torch.manual_seed(3)
    net = LPIPS(resize=32)
    with torch.no_grad():
        for conv in net.features:
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, math.sqrt(2 / conv.weight[0].numel()))
        for w in net.lin_weights():
            w.uniform_(0, 1)
    return net


def stage1_student(tmp_path):
    stage1 = trainer(num_steps=5, M=1)
    stage1.step()
    return ds.get_model(str(stage1.result().save(tmp_path / "s1.json")))


def test_second_stage_adds_lpips_on_the_last_step_by_default(tmp_path, monkeypatch):
    import diffsampler.plugins.sfd.lpips as lp

    monkeypatch.setattr(lp, "load_lpips", lambda **_: small_lpips())
    teacher = stage1_student(tmp_path)
    stage2 = dict(num_steps=3, M=1, teacher="euler", teacher_options="", teacher_afs=True, lr=1e-4)
    tr = trainer(teacher, **stage2)
    assert tr.lpips_weight == 1.0 and trainer(tiny_teacher()).lpips_weight == 0.0
    x = tr.noise(0)
    targets = tr.teacher_targets(x)
    with torch.no_grad():
        out = tr.student_step(tr.student_step(x, 0), 1)  # AFS step, then the one trained step
        expected = float(small_lpips()(out, targets[1]).mean())
    record = tr.step()
    assert math.isclose(record["lpips"], expected, rel_tol=1e-5)
    plain = trainer(teacher, **stage2, lpips=0)
    assert "lpips" not in plain.step()
    changed = [k for k, v in plain.student.net.state_dict().items() if not torch.equal(tr.student.net.state_dict()[k], v)]
    assert changed  # the perceptual term changed the update


def test_missing_lpips_weights_say_how_to_train_without(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    teacher = stage1_student(tmp_path)
    with pytest.raises(ModelLoadError, match="lpips=0"):
        trainer(teacher, num_steps=3, M=1, teacher="euler", teacher_options="", teacher_afs=True)


def test_sample_a_student_with_nothing_but_its_file(tmp_path):
    """``sample --model student.json`` runs Euler on the student's own sigmas with its AFS."""
    tr = trainer(tiny_teacher(), num_steps=5)
    tr.step()
    path = tr.result().save(tmp_path / "s.json")
    runner = CliRunner()
    res = runner.invoke(build_app(), ["sample", "--model", str(path), "--seeds", "0-1", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    explicit = ["sample", "--model", str(path), "--solver", "euler", "--schedule", "sfd", "--steps", "5", "--afs",
                "--seeds", "0-1", "--out", str(tmp_path / "b")]
    assert runner.invoke(build_app(), explicit).exit_code == 0
    import json

    import numpy as np

    record = json.loads((tmp_path / "a" / "config.json").read_text())
    c = record["config"]
    assert (c["solver"], c["schedule"], c["num_steps"], c["afs"], record["nfe"]) == ("euler", "sfd", 5, True, 3)
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("a", "b"))
    np.testing.assert_array_equal(a, b)


def test_a_student_trained_on_random_classes_samples_random_classes(tmp_path):
    tr = trainer(conditional_teacher())
    tr.step()
    path = tr.result().save(tmp_path / "c.json")
    assert ds.get_model(str(path)).sampling_defaults["labels"] == "random"
    assert "labels" not in ds.get_model(str(path), class_label=1).sampling_defaults
    none = trainer(conditional_teacher(label_dropout=0.1), labels="none")
    assert "labels" not in none.result().sampling_defaults
    from diffsampler.runs import RunConfig, plan_run

    assert plan_run(RunConfig(model=str(path), seeds=(0, 1))).config.labels == "random"


# -- the sfd solver: a student as a row of its teacher's comparison ----------------------------
def test_sfd_solver_runs_the_student_in_place_of_its_teacher(tmp_path):
    teacher = tiny_teacher()
    tr = trainer(teacher, step_condition=True, min_steps=3, max_steps=4, num_steps=4, lr=1e-3)
    tr.step()
    path = str(tr.result().save(tmp_path / "s.json"))
    solver = ds.get_solver("sfd", student=path)
    assert solver.recommended_schedule == ("sfd", {"file": path})
    x = tr.noise(0)
    for n in (3, 4):
        sigmas = ds.get_schedule("sfd", file=path).sigmas(n, teacher.sigma_min, teacher.sigma_max)
        with torch.no_grad():
            row = solver.sample(teacher, x, sigmas, afs=True)
            alone = ds.get_solver("euler").sample(ds.get_model(path, steps=n), x, sigmas, afs=True)
        assert row.nfe == n - 2 == solver.nfe(n, afs=True)
        torch.testing.assert_close(row.x, alone.x, rtol=0, atol=0)
    with pytest.raises(OptionError, match="trained with AFS"):
        solver.sample(teacher, x, sigmas)
    with pytest.raises(OptionError, match="distilled from another network"):
        solver.sample(tiny_teacher(seed=1), x, sigmas, afs=True)
    poly = ds.get_schedule("polynomial", rho=3.0).sigmas(4, teacher.sigma_min, teacher.sigma_max)
    with pytest.raises(OptionError, match="runs on its own"):
        solver.sample(teacher, x, poly, afs=True)
    with pytest.raises(OptionError, match="needs a student"):
        ds.get_solver("sfd").sample(teacher, x, sigmas, afs=True)


def test_compare_puts_the_student_beside_the_solvers(tmp_path):
    from diffsampler.compare import CompareConfig, run_compare

    tr = trainer(ds.get_model("digits"), num_steps=4, batch=4, total_kimg=0.004, labels="none")
    tr.train()
    path = str(tr.result().save(tmp_path / "d.json"))
    config = CompareConfig(model="digits", solvers=(f"sfd[student={path}]", "euler"), nfes=(2, 3), afs=True,
                           seeds=tuple(range(4)), metrics=("l2-teacher[teacher_steps=9]",))
    result = run_compare(config)
    cells = {(c.row.split("[")[0].split(" ")[0], c.nfe): c for c in result.cells}
    assert cells[("sfd", 3)].values is None  # a 2-NFE student has no 3-NFE cell
    student, euler = cells[("sfd", 2)].values, cells[("euler", 2)].values
    assert student is not None and euler is not None and set(student) == set(euler)
    started: list[int] = []
    with pytest.raises(OptionError, match=r"^sfd\[student=d.json\] @ sfd: no NFE of 3 can run: .*trained on 4 sigmas with AFS \(run it with --nfe 2 --afs, or --steps 4 --afs\)"):  # a 2-NFE student only
        run_compare(attrs.evolve(config, nfes=(3,)), on_start=started.append)
    assert not started  # refused while planning, before the first cell


def test_half_precision_training_through_the_teachers_precision_option():
    """``--model-opt precision=bf16``: teacher and student forwards run under autocast, the weights
    and Adam stay float32; the targets stay close to float32's and training still learns."""
    teacher = tiny_teacher()
    half = EDMDenoiser(copy_net(teacher.net), name="tiny", precision="bf16")
    tr, ref = trainer(half, lr=1e-3), trainer(teacher, lr=1e-3)
    x = ref.noise(0)
    a, b = tr.teacher_targets(x), ref.teacher_targets(x)
    assert float((a - b).norm() / b.norm()) < 0.05
    before = tr.evaluate(x, b)["loss"]
    for _ in range(3):
        tr.step()
    assert all(p.dtype == torch.float32 for p in tr.student.net.parameters())
    assert tr.evaluate(x, b)["loss"] < before


def copy_net(net):
    import copy

    return copy.deepcopy(net)


def test_second_stage_from_an_sfdv_student_keeps_the_step_condition(tmp_path):
    stage1 = trainer(tiny_teacher(), step_condition=True, min_steps=4, max_steps=7, num_steps=4)
    stage1.step()
    teacher = ds.get_model(str(stage1.result().save(tmp_path / "v.json")))
    tr = trainer(teacher, num_steps=3, M=2, teacher="euler", teacher_options="", teacher_afs=True, lpips=0, lr=1e-3)
    x = tr.noise(0)
    targets = tr.teacher_targets(x)
    served = teacher.with_steps(7)  # (M + 1)(num_steps - 1) + 1 = 7 sigmas, step condition 7
    with torch.no_grad():
        full = ds.get_solver("euler").sample(served, x, torch.tensor(served.sigmas, dtype=torch.float64), afs=True)
    torch.testing.assert_close(targets[-1], full.x)
    tr.step()
    student = tr.result()
    assert student.step_condition == 3 and sorted(student.sigma_table) == [3] and student.nfe == 1
