"""SFD against the seed's rules (zju-pi/diff-sampler ``sfd-main``): the noise range 0.006..80, the
second stage's teacher (Euler with the stage-1 student's AFS), the dpmpp teacher's dynamic
thresholding and the iteration at which the learning rate drops."""

from __future__ import annotations

import json

import pytest
import torch
from test_sfd import tiny_teacher, trainer
from typer.testing import CliRunner

import diffsampler as ds
from diffsampler.cli import build_app
from diffsampler.errors import OptionError
from diffsampler.plugins.edm.denoiser import EDMDenoiser


def seed_polynomial(n: int, lo: float = 0.006, hi: float = 80.0, rho: float = 7.0) -> list[float]:
    """The seed's ``get_schedule(..., 'polynomial')`` (EDM's Eq. 5), written out."""
    return [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]


# -- the noise range (training_loop.py: net.sigma_min = 0.006, sigma_max = 80) ------------------
def test_student_and_teacher_grids_span_the_seeds_range():
    tr = trainer(num_steps=4, M=3)
    assert tr.sigmas == pytest.approx([80.0, 10.929, 0.6699, 0.006], rel=1e-4)  # the review's seed values
    assert tr.sigmas == pytest.approx(seed_polynomial(4), rel=1e-12)
    assert tr.teacher_sigmas.tolist() == pytest.approx(seed_polynomial(13), rel=1e-12)
    assert tr.grid(7)[0] == pytest.approx([80, 31.73, 10.93, 3.107, 0.670, 0.0936, 0.006], rel=1e-3)
    assert float(tr.noise(0).std()) == pytest.approx(80.0, rel=0.1)


def test_the_range_is_recorded_and_sampling_the_student_uses_it(tmp_path):
    tr = trainer(num_steps=4)
    tr.step()
    path = tr.result().save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    assert (data["sigma_min"], data["sigma_max"]) == (0.006, 80.0)
    assert (data["settings"]["sigma_min"], data["settings"]["sigma_max"]) == (0.006, 80.0)
    student = ds.get_model(str(path))
    assert (student.sigma_min, student.sigma_max) == (0.006, 80.0)
    from diffsampler.runs import RunConfig, plan_run

    plan = plan_run(RunConfig(model=str(path), seeds=(0, 1)))
    assert plan.sigmas.tolist() == pytest.approx(seed_polynomial(4), rel=1e-12)
    # standing in for its teacher (0.002..80), the student still runs on its own sigmas
    teacher = tiny_teacher()
    own = ds.get_schedule("sfd", file=str(path)).sigmas(4, teacher.sigma_min, teacher.sigma_max)
    assert own.tolist() == pytest.approx(seed_polynomial(4), rel=1e-12)
    with pytest.raises(OptionError, match=r"outside the run's 0\.01\.\.80"):
        ds.get_schedule("sfd", file=str(path)).sigmas(4, 0.01, 80.0)


def test_the_range_follows_a_narrower_teacher_and_explicit_values():
    narrow = EDMDenoiser(tiny_teacher().net, name="tiny", sigma_min=0.01, sigma_max=50.0)
    tr = trainer(narrow)
    assert (tr.sigmas[0], tr.sigmas[-1]) == pytest.approx((50.0, 0.01), rel=1e-12)
    sd = trainer(sigma_min=0.1)  # the seed's Stable Diffusion setting
    assert (sd.sigmas[0], sd.sigmas[-1]) == pytest.approx((80.0, 0.1), rel=1e-12)
    edm = trainer(sigma_min=0.002)
    assert edm.sigmas[-1] == pytest.approx(0.002, rel=1e-12)
    with pytest.raises(OptionError, match=r"leaves the teacher's 0\.002\.\.80"):
        trainer(sigma_min=0.001)


def test_a_student_saved_with_edms_range_still_loads_samples_and_teaches(tmp_path):
    """A file written before the seed's range was the default: sigmas down to 0.002."""
    old = trainer(num_steps=7, M=1, sigma_min=0.002)
    old.step()
    path = old.result().save(tmp_path / "old.json")
    data = json.loads(path.read_text())
    for key in ("sigma_min", "sigma_max", "teacher_afs"):
        del data["settings"][key]
    data["settings"].update(teacher="dpmpp", teacher_options="max_order=3")
    path.write_text(json.dumps(data))
    student = ds.get_model(str(path))
    assert student.sigma_min == 0.002 and student.sigmas == pytest.approx(seed_polynomial(7, lo=0.002), rel=1e-12)
    x = old.noise(0)
    with torch.no_grad():
        a = ds.get_solver("euler").sample(student, x, torch.tensor(student.sigmas, dtype=torch.float64), afs=True).x
        b = ds.get_solver("euler").sample(old.result(), x, torch.tensor(old.sigmas, dtype=torch.float64), afs=True).x
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a second stage from it keeps the student's own range, so its grid matches the trained one
    stage2 = trainer(student, num_steps=3, M=2, lpips=0)
    assert stage2.teacher_sigmas.tolist() == pytest.approx(student.sigmas, rel=1e-12)


def test_resuming_a_checkpoint_trained_on_other_sigmas_is_refused(tmp_path):
    tr = trainer(sigma_min=0.002)
    tr.step()
    tr.save_checkpoint(tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    for key in ("sigma_min", "sigma_max"):  # as a checkpoint written before these options
        del state["options"][key]
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(OptionError, match=r"resume with sigma_min=0\.002, sigma_max=80"):
        trainer().load_checkpoint(tmp_path)
    trainer(sigma_min=0.002).load_checkpoint(tmp_path)


# -- the second stage's teacher (loss.py: is_second_stage forces euler, the student's AFS) -------
@pytest.mark.parametrize("afs", [True, False])
def test_second_stage_defaults_are_euler_with_the_students_afs(tmp_path, afs):
    stage1 = trainer(num_steps=7, M=1, afs=afs)
    stage1.step()
    teacher = ds.get_model(str(stage1.result().save(tmp_path / "s1.json")))
    default = trainer(teacher, num_steps=3, M=2, lpips=0, afs=afs)
    explicit = trainer(teacher, num_steps=3, M=2, lpips=0, afs=afs, teacher="euler", teacher_options="",
                       teacher_afs=afs)
    o = default.options
    assert (o.teacher, o.teacher_options, o.teacher_afs) == ("euler", "", afs)
    x = default.noise(0)
    torch.testing.assert_close(default.teacher_targets(x), explicit.teacher_targets(x), rtol=0, atol=0)
    with torch.no_grad():
        full = ds.get_solver("euler").sample(teacher, x, torch.tensor(teacher.sigmas, dtype=torch.float64), afs=afs).x
    torch.testing.assert_close(default.teacher_targets(x)[-1], full)
    # explicit choices still win
    other = trainer(teacher, num_steps=3, M=2, lpips=0, teacher="heun", teacher_afs=not afs)
    assert (other.options.teacher, other.options.teacher_afs) == ("heun", not afs)


def test_cli_second_stage_records_the_seeds_teacher(tmp_path):
    stage1 = trainer(num_steps=7, M=1)
    stage1.step()
    s1 = stage1.result().save(tmp_path / "s1.json")
    out = tmp_path / "s2.json"
    res = CliRunner().invoke(build_app(), ["sfd", "train", "--model", str(s1), "--steps", "3", "--M", "2",
                                           "--lpips", "0", "--batch", "2", "--total-kimg", "0.002", "--out", str(out),
                                           "--device", "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
    settings = json.loads(out.read_text())["settings"]
    assert (settings["teacher"], settings["teacher_options"], settings["teacher_afs"]) == ("euler", "", True)
    assert (settings["sigma_min"], settings["sigma_max"]) == (0.006, 80.0)


# -- the first stage's teacher: the seed's dpm_pp_sampler always thresholds dynamically ---------
def test_default_teacher_is_dpmpp_with_dynamic_thresholding_on_digits():
    digits = ds.get_model("digits")
    tr = trainer(digits, num_steps=4, M=3, batch=16, labels="none")
    x = tr.noise(0)
    targets = tr.teacher_targets(x)
    grid = tr.teacher_sigmas
    with torch.no_grad():
        seeds = ds.get_solver("dpmpp", max_order=3, thresholding="dynamic").sample(digits, x, grid, return_trajectory=True)
        plain = ds.get_solver("dpmpp", max_order=3).sample(digits, x, grid).x
    assert seeds.trajectory is not None
    torch.testing.assert_close(targets, seeds.trajectory[4::4], rtol=0, atol=0)
    assert float((targets[-1] - plain).abs().max()) > 1e-2  # thresholding is no no-op on digits
    off = trainer(digits, num_steps=4, M=3, batch=16, labels="none", teacher_options="max_order=3,thresholding=none")
    torch.testing.assert_close(off.teacher_targets(x)[-1], plain, rtol=0, atol=0)


# -- the learning-rate drop (training_loop.py checks cur_nimg before adding the batch) -----------
def test_lr_drops_one_iteration_after_half_the_trajectories_as_the_seed():
    tr = trainer(batch=8, total_kimg=0.032, lr=1e-4)  # 4 iterations; 16 trajectories seen before iteration 2
    assert [tr.lr_at(i) for i in range(4)] == pytest.approx([1e-4, 1e-4, 1e-4, 1e-5])
    seed = trainer(batch=128, total_kimg=200)  # the seed's settings: lr/10 from iteration 783
    assert (seed.lr_at(782), seed.lr_at(783)) == pytest.approx((5e-5, 5e-6))
    early = trainer(batch=8, total_kimg=0.032, lr_drop=0.0)
    assert [early.lr_at(i) for i in range(3)] == pytest.approx([5e-5, 5e-6, 5e-6])
