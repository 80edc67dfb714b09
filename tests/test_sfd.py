"""SFD: one step lowers the loss, bit-identical resume, teacher targets, the saved student
reloads and samples on its stored schedule, registration without torch, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffsampler as ds
from diffsampler import tensorfile
from diffsampler.cli import build_app
from diffsampler.errors import OptionError
from diffsampler.plugins.edm.denoiser import EDMDenoiser
from diffsampler.plugins.edm.precond import EDMPrecond

TINY = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)


def tiny_teacher(seed: int = 0) -> EDMDenoiser:
    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", **TINY)
    # random weights with a non-trivial output layer (EDM zero-initialises it)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return EDMDenoiser(net, name="tiny")


def trainer(net: EDMDenoiser | None = None, **options):
    settings = dict(batch=8, total_kimg=0.032, num_steps=4, M=1)
    settings.update(options)
    return ds.get_distiller("sfd", **settings).trainer(net or tiny_teacher())


def params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_registration_does_not_import_torch():
    code = (
        "import sys, diffsampler as ds, diffsampler.plugins.sfd as p\n"
        "reg = ds.discover(entry_points=False, plugins=[('sfd', p)])\n"
        "assert not reg.failures, reg.failures\n"
        "assert reg.get('distiller', 'sfd') and reg.get('schedule', 'sfd') and reg.get('model', 'sfd')\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seed_defaults():
    o = ds.get_distiller("sfd").options
    assert (o.lr, o.batch, o.M, o.rho, o.afs, o.num_steps, o.total_kimg) == (5e-5, 128, 3, 7.0, True, 4, 200)
    # the teacher and the noise range follow the seed's rules once the teacher is known
    assert (o.teacher, o.teacher_options, o.teacher_afs, o.sigma_min, o.sigma_max) == (None,) * 5
    r = ds.get_distiller("sfd").trainer(tiny_teacher()).options
    assert (r.teacher, r.teacher_options, r.teacher_afs) == ("dpmpp", "max_order=3,thresholding=dynamic", False)
    assert (r.sigma_min, r.sigma_max) == (0.006, 80.0)


def test_teacher_grid_contains_the_student_points_and_targets_are_the_teacher_run():
    tr = trainer(M=3, num_steps=4)
    assert len(tr.teacher_sigmas) == 13
    torch.testing.assert_close(tr.teacher_sigmas[::4], torch.tensor(tr.sigmas, dtype=torch.float64), rtol=1e-12, atol=0)
    x = tr.noise(0)
    targets = tr.teacher_targets(x)
    assert targets.shape == (3, 8, 1, 8, 8)
    with torch.no_grad():
        end = ds.get_solver("dpmpp", max_order=3, thresholding="dynamic").sample(tr.teacher, x, tr.teacher_sigmas).x
    torch.testing.assert_close(targets[-1], end)


def test_noise_depends_on_the_iteration_only():
    tr = trainer()
    assert torch.equal(tr.noise(1), ds.seed_noise(range(tr.options.seed + 8, tr.options.seed + 16), (1, 8, 8)) * 80.0)
    assert not torch.equal(tr.noise(0), tr.noise(1))


def test_student_starts_as_the_teacher_and_afs_step_is_analytic():
    tr = trainer()
    x = tr.noise(0)
    with torch.no_grad():
        torch.testing.assert_close(tr.student(x, torch.tensor(3.0)), tr.teacher(x, torch.tensor(3.0)))
    s0, s1 = tr.sigmas[0], tr.sigmas[1]
    torch.testing.assert_close(tr.student_step(x, 0), x + (s1 - s0) * x / (1 + s0**2) ** 0.5)
    # the student's loss before training is Euler's error against the teacher
    sig = torch.tensor(tr.sigmas, dtype=torch.float64)
    with torch.no_grad():
        euler = ds.get_solver("euler").sample(tr.teacher, x, sig, afs=True).x
    targets = tr.teacher_targets(x)
    assert tr.evaluate(x, targets)["loss2"] == pytest.approx(float((euler - targets[-1]).abs().mean()), rel=1e-5)


def test_one_training_step_lowers_the_loss():
    tr = trainer(lr=1e-4)
    x = tr.noise(0)
    targets = tr.teacher_targets(x)
    before = tr.evaluate(x, targets)
    teacher_before = params(tr.teacher.net)
    tr.step()  # iteration 0: the same noise
    after = tr.evaluate(x, targets)
    assert after["loss"] < before["loss"]
    assert after["loss0"] == pytest.approx(before["loss0"])  # AFS step: no network, unchanged
    assert all(torch.equal(v, params(tr.teacher.net)[k]) for k, v in teacher_before.items())


def test_resume_continues_bit_identically(tmp_path):
    opts = dict(total_kimg=0.032, batch=8, ema=0.01)  # 4 iterations; lr drops after 2; EMA on
    teacher = tiny_teacher()
    straight = trainer(teacher, **opts)
    straight.train()
    first = trainer(teacher, **opts)
    first.train(checkpoint=tmp_path / "ck", stop_after=2)
    assert first.iteration == 2 and json.loads((tmp_path / "ck" / "state.json").read_text())["iteration"] == 2
    resumed = trainer(teacher, **opts)
    resumed.load_checkpoint(tmp_path / "ck")
    resumed.train()
    assert resumed.iteration == straight.iteration == 4
    a, b = params(straight.student.net), params(resumed.student.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = params(straight.ema_net), params(resumed.ema_net)
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    # and training moved the student away from the teacher
    t = params(teacher.net)
    assert any(not torch.equal(a[k], t[k]) for k in a)


def test_resume_refuses_other_options_or_teacher(tmp_path):
    teacher = tiny_teacher()
    tr = trainer(teacher)
    tr.step()
    tr.save_checkpoint(tmp_path)
    with pytest.raises(OptionError, match="lr="):
        trainer(teacher, lr=1e-3).load_checkpoint(tmp_path)
    with pytest.raises(OptionError, match="another teacher"):
        trainer(tiny_teacher(seed=1)).load_checkpoint(tmp_path)


def test_saved_student_reloads_and_samples_with_its_schedule(tmp_path):
    tr = trainer()
    tr.step()
    student = tr.result()
    path = student.save(tmp_path / "student.json")
    assert (tmp_path / "student.safetensors").is_file()
    loaded = ds.get_model(str(path))
    assert loaded.sigmas == pytest.approx(tr.sigmas, rel=1e-15) and loaded.afs and loaded.recommended == "euler"
    assert loaded.nfe == 2
    sched = ds.get_schedule("sfd", file=str(path))
    sig = sched.sigmas(4, loaded.sigma_min, loaded.sigma_max, loaded)
    assert tuple(sig.tolist()) == loaded.sigmas
    with pytest.raises(OptionError, match=r"--nfe 2 --afs, or --steps 4 --afs\)"):
        sched.sigmas(5, loaded.sigma_min, loaded.sigma_max)
    x = tr.noise(3)
    euler = ds.get_solver("euler")
    with torch.no_grad():
        a = euler.sample(loaded, x, sig, afs=True)
        b = euler.sample(tr.student, x, sig, afs=True)
    assert a.nfe == 2
    torch.testing.assert_close(a.x, b.x)
    # the teacher would give another result on the same schedule: the weights were stored
    with torch.no_grad():
        c = euler.sample(tr.teacher, x, sig, afs=True)
    assert not torch.allclose(a.x, c.x)


def test_not_a_student_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(OptionError, match="not an SFD student"):
        ds.get_schedule("sfd", file=str(bad))
    with pytest.raises(OptionError, match="needs an SFD student"):
        ds.get_schedule("sfd").sigmas(4, 0.002, 80.0)


def test_non_edm_teacher_is_refused():
    with pytest.raises(OptionError, match="EDM network"):
        ds.get_distiller("sfd").trainer(ds.get_model("empirical"))


def test_cli_train_resume_and_sample(tmp_path):
    runner = CliRunner()
    out = tmp_path / "stu.json"
    args = ["sfd", "train", "--model", "digits", "--out", str(out), "--batch", "4", "--total-kimg", "0.008",
            "--M", "1", "--checkpoint", str(tmp_path / "ck"), "--checkpoint-every", "1", "--log-every", "1",
            "--device", "cpu", "--threads", "1"]
    res = runner.invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    assert "iter      2" in res.output and out.is_file()
    res = runner.invoke(build_app(), args)  # the checkpoint is complete: resumes at the end
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output and "iteration 2/2" in res.output
    last = json.loads((tmp_path / "ck" / "state.json").read_text())["history"][-1]["loss"]
    assert "loss nan" not in res.output and f"2/2 loss {last:.5f}" in res.output  # the last real loss
    samples = tmp_path / "samples"
    res = runner.invoke(build_app(), ["sample", "--model", str(out), "--solver", "euler", "--schedule", "sfd",
                                      "--schedule-opt", f"file={out}", "--steps", "4", "--afs", "--seeds", "0-1",
                                      "--out", str(samples)])
    assert res.exit_code == 0, res.output
    assert (samples / "samples.npz").is_file()


def _tiny_teacher_file(tmp_path: Path) -> Path:
    from diffsampler.plugins.edm.checkpoint import save_network

    return save_network(tiny_teacher().net, tmp_path / "teacher")


def _signal_after_first_iteration(args: list[str], log: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Run ``diffsampler *args``, send ``signum`` once its first loss line is out, wait for it."""
    with log.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "diffsampler", *args], stdout=stdout,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 60
        while time.time() < deadline and "iter      1" not in log.read_text():
            time.sleep(0.02)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), stderr)


def _train_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["sfd", "train", "--model", str(teacher), "--out", str(out), "--batch", "4", "--total-kimg", "0.08",
            "--M", "1", "--log-every", "1", "--device", "cpu", "--threads", "1", *extra]


def test_ctrl_c_saves_the_state_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path):
    teacher = _tiny_teacher_file(tmp_path)
    ck = tmp_path / "ck"
    args = _train_args(teacher, tmp_path / "stu.json", "--checkpoint", str(ck), "--checkpoint-every", "1000")
    stopped = _signal_after_first_iteration(args, tmp_path / "log", signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    done = json.loads((ck / "state.json").read_text())["iteration"]
    assert 1 <= done < 20, "not interrupted mid-way"
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"interrupted at iteration {done}/20; state saved to {ck}: rerun the same command to resume")
    assert "Traceback" not in stopped.stderr and not (tmp_path / "stu.json").exists()

    threads = torch.get_num_threads()
    try:  # in this process, to spare a start-up: the command sets torch's threads to 1
        resumed = CliRunner().invoke(build_app(), args)
        assert resumed.exit_code == 0, resumed.output
        assert f"resumed from {ck} at iteration {done}/20" in resumed.output
        # the same run, uninterrupted (one thread too: the same float reductions)
        whole = ds.get_distiller("sfd", num_steps=4, M=1, batch=4, total_kimg=0.08, device="cpu")
        straight = whole.trainer(ds.get_model(str(teacher)))
        straight.train()
    finally:
        torch.set_num_threads(threads)
    a, b = tensorfile.load_file(tmp_path / "stu.safetensors"), straight.result().net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_without_a_checkpoint_says_nothing_was_saved(tmp_path):
    args = _train_args(_tiny_teacher_file(tmp_path), tmp_path / "stu.json")
    stopped = _signal_after_first_iteration(args, tmp_path / "log", signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted at iteration ") and last.endswith(
        "/20; nothing was saved (no --checkpoint): give --checkpoint DIR to make a run resumable")
    assert "Traceback" not in stopped.stderr and not (tmp_path / "stu.json").exists()


def test_unwritable_outputs_are_refused_before_training(tmp_path):
    runner = CliRunner()
    (tmp_path / "stu.json").mkdir()
    res = runner.invoke(build_app(), ["sfd", "train", "--out", str(tmp_path / "stu.json"), "--device", "cpu"])
    assert isinstance(res.exception, OptionError) and "is a folder" in str(res.exception)
    (tmp_path / "ck").write_text("")
    res = runner.invoke(build_app(), ["sfd", "train", "--out", str(tmp_path / "new" / "s.json"),
                                      "--checkpoint", str(tmp_path / "ck"), "--device", "cpu"])
    assert isinstance(res.exception, OptionError) and str(res.exception) == (
        f"--checkpoint {str(tmp_path / 'ck')!r} is a file, not a folder")


TORCHRUN_SCRIPT = '''
import sys
import torch
torch.set_num_threads(1)
from diffsampler.distributed import barrier, setup, teardown
from test_sfd import trainer, tiny_teacher
setup("cpu")
tr = trainer(tiny_teacher(), lr=1e-4)
tr.train()
if tr.dist.is_main:
    torch.save({k: v for k, v in tr.student.net.state_dict().items()}, sys.argv[1])
    torch.save(torch.tensor([h["loss"] for h in tr.history]), sys.argv[1] + ".loss")
barrier()  # leave the group together: gloo can abort a rank that tears down while its peer still works
teardown()
'''


def test_torchrun_two_processes_train_like_one(tmp_path):
    """Each process takes half of every batch and the gradients are summed: the same updates."""
    import os

    script = tmp_path / "s.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "student.pt"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(out)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = trainer(tiny_teacher(), lr=1e-4)
    one.train()
    two = torch.load(out, weights_only=True)
    # float round-off of the summed gradients, amplified by Adam where a gradient is near zero:
    # 1e-5 is 1/60 of the largest weight update here (6e-4)
    for k, v in one.student.net.state_dict().items():
        torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-5)
    losses = torch.load(str(out) + ".loss", weights_only=True)
    torch.testing.assert_close(losses, torch.tensor([h["loss"] for h in one.history]), rtol=1e-5, atol=0)
    teacher = tiny_teacher().net.state_dict()
    assert any(not torch.equal(two[k], teacher[k]) for k in teacher)  # it did train


def test_second_stage_from_a_student_teacher(tmp_path):
    """Stage 2 (to 1 NFE): the teacher is a stage-1 student sampled with Euler + AFS on its own
    sigmas, which must be the finer grid of this run; its Euler run is the target."""
    stage1 = trainer(num_steps=7, M=1)
    stage1.step()
    path = stage1.result().save(tmp_path / "s1.json")
    teacher = ds.get_model(str(path))
    with pytest.raises(OptionError, match="pick M and num_steps"):
        trainer(teacher, num_steps=3, M=1, teacher="euler", teacher_options="", teacher_afs=True)
    tr = trainer(teacher, num_steps=3, M=2, teacher="euler", teacher_options="", teacher_afs=True, lr=1e-4, lpips=0)
    x = tr.noise(0)
    targets = tr.teacher_targets(x)
    sig = torch.tensor(teacher.sigmas, dtype=torch.float64)
    with torch.no_grad():
        full = ds.get_solver("euler").sample(teacher, x, sig, afs=True)
    torch.testing.assert_close(targets[-1], full.x)
    before = tr.evaluate(x, targets)
    tr.step()
    assert tr.evaluate(x, targets)["loss"] < before["loss"]
    assert tr.result().nfe == 1
