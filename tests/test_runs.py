"""Runs at scale: output formats, resume after interruption, torchrun sharding."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from diffsampler.errors import OptionError
from diffsampler.images import png_bytes, read_png, to_uint8
from diffsampler.imagesets import count_images, iter_images
from diffsampler.outputs import RunDirectory, png_name
from diffsampler.runs import RunConfig, execute, plan_run


def cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True, text=True, **kw)


def _reference(seeds, nfe=4) -> np.ndarray:
    plan = plan_run(RunConfig(seeds=tuple(seeds), batch=len(seeds), nfe=nfe))
    got = []
    execute(plan, on_batch=lambda b, x: got.append(x.numpy()))
    return got[0]


@pytest.mark.parametrize("fmt", ["npz", "png", "zip"])
def test_formats_round_trip_into_the_image_loader(tmp_path, fmt):
    seeds = [0, 1, 2, 1500, 7]
    proc = cli("sample", "--seeds", ",".join(map(str, seeds)), "--batch", "2", "--nfe", "4",
               "--format", fmt, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    expected = to_uint8(_reference(seeds))
    name = {"npz": "samples.npz", "png": "", "zip": "images.zip"}[fmt]
    source = tmp_path / name if name else tmp_path
    assert count_images(source) == len(seeds)
    loaded = np.concatenate(list(iter_images(source, batch=2)))
    if fmt == "npz":
        assert np.array_equal(loaded, expected)  # npz keeps the seed order
    else:  # folders and zips are read in sorted file-name order (EDM's layout)
        order = np.argsort([png_name(s) for s in seeds])
        assert np.array_equal(loaded, expected[order])
    if fmt == "png":
        assert (tmp_path / "001000" / "001500.png").exists()


def test_png_reader_handles_every_filter_type():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    stride, bpp = 12, 3
    rows = image.reshape(5, stride).astype(np.int32)
    encoded = []
    prev = np.zeros(stride, dtype=np.int32)
    for y, kind in enumerate([0, 1, 2, 3, 4]):  # one row per filter, encoded independently
        cur = rows[y]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros(stride, np.int32)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        encoded.append(bytes([kind]) + ((cur - pred) & 0xFF).astype(np.uint8).tobytes())
        prev = cur
    reference = png_bytes(image)
    # Replace the IDAT of a valid file with the multi-filter stream.
    head = reference[: reference.index(b"IDAT") - 4]
    body = zlib.compress(b"".join(encoded))
    import struct

    chunk = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    data = head + chunk + reference[reference.index(b"IEND") - 4 :]
    assert np.array_equal(read_png(data), image)


def test_interrupted_run_resumes_to_identical_samples(tmp_path):
    seeds = tuple(range(30))
    config = RunConfig(seeds=seeds, batch=4, nfe=4)
    plan = plan_run(config)
    rundir = RunDirectory(tmp_path, "png", plan.model.shape)
    rundir.prepare(plan.record())

    class Crash(Exception):
        pass

    def crash_after_three(batch, x):
        if batch.index == 3:
            raise Crash
        rundir.write(batch, x.numpy())

    with pytest.raises(Crash):
        execute(plan, on_batch=crash_after_three)
    assert len(rundir.pending(plan.batches)) == len(plan.batches) - 3
    assert not list(tmp_path.rglob(".*.tmp-*"))

    # Rerun (as the CLI would): only the missing batches are sampled.
    sampled = []
    again = RunDirectory(tmp_path, "png", plan.model.shape)
    assert again.prepare(plan_run(config).record()) is True
    execute(plan, batches=again.pending(plan.batches),
            on_batch=lambda b, x: (sampled.append(b.index), again.write(b, x.numpy())))
    assert sampled == list(range(3, len(plan.batches)))
    again.finish(plan.batches, {})
    loaded = np.concatenate(list(iter_images(tmp_path)))
    assert np.array_equal(loaded, to_uint8(_reference(seeds)))


@pytest.mark.slow
def test_sigterm_mid_run_then_rerun_completes_identically(tmp_path):
    out = tmp_path / "run"
    args = ("sample", "--seeds", "0-159", "--batch", "2", "--nfe", "30", "--format", "zip", "--out", str(out))
    proc = subprocess.Popen([sys.executable, "-m", "diffsampler", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / ".parts").glob("batch-*.npz"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    parts = list((out / ".parts").glob("batch-*.npz"))
    assert 5 <= len(parts) < 80, "the run was not interrupted mid-way"
    assert proc.returncode == 143  # 128 + SIGTERM, after the batches in the writer's hands are kept
    assert f"interrupted: {len(parts)} of 80 batches kept in {out}; rerun the same command" in stderr.decode()
    for part in parts:  # every part on disk is complete
        with np.load(part) as data:
            assert data["samples"].shape == (2, 3, 32, 32)
    assert not (out / "images.zip").exists()

    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert not list(out.rglob(".*.tmp-*")) and not (out / ".parts").exists()
    assert json.loads((out / "config.json").read_text())["complete"] is True
    whole = tmp_path / "whole"
    assert cli(*args[:-1], str(whole)).returncode == 0
    a = np.concatenate(list(iter_images(out / "images.zip")))
    b = np.concatenate(list(iter_images(whole / "images.zip")))
    assert a.shape[0] == 160 and np.array_equal(a, b)


def test_configuration_mismatch_on_resume_is_refused(tmp_path):
    assert cli("sample", "--seeds", "0-3", "--nfe", "4", "--out", str(tmp_path)).returncode == 0
    proc = cli("sample", "--seeds", "0-3", "--nfe", "5", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "holds a different run (num_steps: 5 on disk, 6 now)" in proc.stderr
    proc = cli("sample", "--seeds", "0-3", "--nfe", "4", "--format", "png", "--out", str(tmp_path))
    assert proc.returncode == 2 and "format: 'npz' on disk, 'png' now" in proc.stderr
    again = cli("sample", "--seeds", "0-3", "--nfe", "4", "--out", str(tmp_path))
    assert again.returncode == 0 and "nothing to do" in again.stderr


@pytest.mark.parametrize(("solver", "needs"), [("sfd", "needs a student"), ("amed-ipndm", "needs a predictor")])
def test_a_learned_solver_without_its_file_is_refused_before_the_run_starts(tmp_path, solver, needs):
    out = tmp_path / "run"
    done = cli("sample", "--model", "digits", "--solver", solver, "--nfe", "4", "--seeds", "0-1", "--out", str(out))
    assert done.returncode == 2 and needs in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()  # no config.json, no header: the check runs while planning


def test_image_formats_refuse_non_image_models(tmp_path):
    with pytest.raises(OptionError, match="needs image-shaped samples"):
        RunDirectory(tmp_path, "png", (2,))
    with pytest.raises(OptionError, match="unknown output format"):
        RunDirectory(tmp_path, "tiff", (3, 8, 8))


def test_loader_errors(tmp_path):
    with pytest.raises(OptionError, match="no such image set"):
        list(iter_images(tmp_path / "missing"))
    with pytest.raises(OptionError, match="holds no PNG images"):
        list(iter_images(tmp_path))
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    (tmp_path / "b.png").write_bytes(png_bytes(np.zeros((5, 4, 3), np.uint8)))
    with pytest.raises(OptionError, match="image of shape"):
        list(iter_images(tmp_path))


@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process_run(tmp_path):
    args = ["sample", "--seeds", "0-22", "--batch", "3", "--nfe", "5", "--device", "cpu"]
    one = cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "diffsampler", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stderr
    a, b = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert np.array_equal(a["seeds"], b["seeds"])
    assert np.array_equal(a["samples"], b["samples"])
    # a refusal that only rank 0 finds (the folder holds another run) stops both ranks cleanly
    other = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "diffsampler", *args[:-4], "--nfe", "4", "--device", "cpu", "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert other.returncode != 0 and other.stderr.count("holds a different run") == 1, other.stderr[-3000:]
    # rank 1 leaves quietly (status 2, unless torchrun stops it first) instead of dying at a barrier
    assert "Connection reset" not in other.stderr and "RuntimeError" not in other.stderr, other.stderr[-3000:]


def test_class_labels_per_seed_are_recorded_and_followed(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    args = ("sample", "--model", "digits", "--solver", "heun", "--nfe", "18", "--seeds", "0-29",
            "--labels", "random")
    proc = cli(*args, "--batch", "7", "--out", str(tmp_path / "npz"))
    assert proc.returncode == 0, proc.stderr
    data = np.load(tmp_path / "npz" / "samples.npz")
    labels = data["labels"]
    assert labels.shape == (30,) and len(set(labels.tolist())) > 3
    # the label of a seed depends on the seed only: another batch size, same labels and images
    again = cli(*args, "--batch", "30", "--format", "png", "--out", str(tmp_path / "png"))
    assert again.returncode == 0, again.stderr
    rows = json.loads((tmp_path / "png" / "dataset.json").read_text())["labels"]
    assert rows[3] == [png_name(3), int(labels[3])] and [r[1] for r in rows] == labels.tolist()
    # and the network draws the digit it was asked for
    digits = load_digits()
    clf = LogisticRegression(max_iter=2000).fit(digits.images.reshape(-1, 64) / 8.0 - 1.0, digits.target)
    predicted = clf.predict(data["samples"].reshape(30, 64))
    assert (predicted == labels).mean() >= 0.8


def test_labels_errors(tmp_path):
    bad = cli("sample", "--seeds", "0", "--labels", "random", "--out", str(tmp_path / "a"))
    assert bad.returncode == 2 and "not class-conditional" in bad.stderr
    bad = cli("sample", "--model", "digits", "--seeds", "0", "--labels", "12", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "out of range" in bad.stderr
    bad = cli("sample", "--model", "digits", "--seeds", "0", "--labels", "some", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and "labels must be 'random', 'seed' or a class index" in bad.stderr
    plan = plan_run(RunConfig(model="digits", seeds=(3, 12, 25), labels="seed", nfe=2))
    from diffsampler.runs import seed_labels

    assert seed_labels(plan, plan.config.seeds) == [3, 2, 5]


class _Student:
    """A model with its own sampling plan (a distilled student's, say)."""

    @property
    def sampling_defaults(self) -> dict:
        return {"solver": "heun", "schedule": "time_uniform", "schedule_options": {"rho": 2.0}, "num_steps": 4,
                "afs": True, "labels": "random"}


def test_open_choices_come_from_the_models_own_plan():
    from diffsampler.runs import DEFAULT_NFE, with_model_defaults

    own = with_model_defaults(RunConfig(), _Student())
    assert (own.solver, own.schedule, own.schedule_options, own.num_steps, own.nfe, own.afs) == (
        "heun", "time_uniform", {"rho": 2.0}, 4, None, True)
    # the user's choices win; another solver drops the model's schedule, steps and AFS
    with pytest.warns(UserWarning, match="trained with AFS; this run samples it without AFS, off its training"):
        mine = with_model_defaults(RunConfig(afs=False, nfe=3), _Student())
    assert (mine.solver, mine.schedule, mine.num_steps, mine.nfe, mine.afs) == ("heun", "time_uniform", None, 3, False)
    other = with_model_defaults(RunConfig(solver="euler"), _Student())
    assert (other.schedule, other.num_steps, other.nfe, other.afs) == (None, None, DEFAULT_NFE, False)
    assert (own.labels, other.labels, with_model_defaults(RunConfig(labels="seed"), _Student()).labels) == (
        "random", "random", "seed")
    plain = with_model_defaults(RunConfig(), object())
    assert (plain.solver, plain.nfe, plain.afs) == ("euler", DEFAULT_NFE, False)


def test_compile_runs_the_models_compiled_twin(monkeypatch):
    import diffsampler.runs as runs_module

    real = runs_module.get_model
    calls = []

    class Twin:
        def __init__(self, model):
            self.model = model
            self.shape, self.sigma_min, self.sigma_max = model.shape, model.sigma_min, model.sigma_max

        def __call__(self, x, sigma, cond=None):
            calls.append(len(x))
            return self.model(x, sigma, cond)

    class CompilableGMM:
        def __init__(self, model):
            self.model = model
            self.shape, self.sigma_min, self.sigma_max = model.shape, model.sigma_min, model.sigma_max

        def __call__(self, x, sigma, cond=None):
            raise AssertionError("the eager model ran although --compile was given")

        def compiled(self, mode="default"):
            return Twin(self.model)

    monkeypatch.setattr(runs_module, "get_model", lambda name, **o: CompilableGMM(real(name, **o)))
    plan = plan_run(RunConfig(model="gmm", model_options={"shape": (2, 2, 2)}, nfe=3, seeds=range(2), compile=True))
    execute(plan, on_batch=lambda b, x: None)
    assert calls == [2, 2, 2]


def test_compile_and_cuda_graph_fail_clearly_where_they_cannot_work():
    with pytest.raises(OptionError, match="cannot be compiled"):
        plan_run(RunConfig(model="gmm", nfe=3, compile=True))
    with pytest.raises(OptionError, match="--cuda-graph needs a CUDA device"):
        plan_run(RunConfig(model="gmm", nfe=3, seeds=range(2), cuda_graph=True, device="cpu"))
    plan = plan_run(RunConfig(model="gmm", nfe=3, seeds=range(2), cuda_graph=True, device="cuda"))
    with pytest.raises(OptionError, match="--cuda-graph needs a CUDA device"):  # a CPU rank after all
        execute(plan, on_batch=lambda b, x: None, device="cpu")


def test_how_a_run_is_computed_does_not_block_its_resume(tmp_path):
    rundir = RunDirectory(tmp_path / "r", "npz", (2, 2, 2))
    config = RunConfig(model="gmm", model_options={"shape": (2, 2, 2)}, nfe=3, seeds=range(2))
    record = plan_run(config).record()
    assert rundir.prepare(record) is False
    again = plan_run(RunConfig(**{**config.to_dict(), "cuda_graph": True, "cudnn_benchmark": True, "device": "cuda"}))
    assert rundir.prepare(again.record()) is True


def invoke(*args: str):
    """Run the CLI in-process (fast); user errors come back as ``result.exception``."""
    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    return CliRunner().invoke(build_app(), list(args))


@pytest.mark.parametrize(("fmt", "lose"), [("npz", "samples.npz"), ("zip", "images.zip"),
                                           ("png", "000000/000005.png")])
def test_a_complete_run_whose_samples_were_deleted_samples_them_again(tmp_path, fmt, lose):
    args = ("sample", "--seeds", "0-9", "--batch", "4", "--nfe", "3", "--format", fmt, "--out", str(tmp_path))
    assert invoke(*args).exit_code == 0
    source = tmp_path / ("" if fmt == "png" else lose)
    expected = np.concatenate(list(iter_images(source)))
    (tmp_path / lose).unlink()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    shown = "1 PNG file" if fmt == "png" else lose
    assert f"held this run, complete, but lost {shown} since: sampling again what is missing" in again.stderr
    assert "nothing to do" not in again.stderr
    if fmt == "png":  # only the batch that lost a file is sampled again
        assert "resuming: 2 of 3 batches already done" in again.stderr
    assert np.array_equal(np.concatenate(list(iter_images(source))), expected)
    assert json.loads((tmp_path / "config.json").read_text())["complete"] is True
    assert "nothing to do" in invoke(*args).stderr


def _interrupted_npz_run(root, seeds=tuple(range(10)), batch=4):
    """A run directory as a run interrupted after all its batches left: parts, no samples.npz."""
    plan = plan_run(RunConfig(seeds=seeds, batch=batch, nfe=3))
    rundir = RunDirectory(root, "npz", plan.model.shape)
    rundir.prepare(plan.record())
    execute(plan, on_batch=lambda b, x: rundir.write(b, x.numpy()))
    return plan, rundir


def test_a_damaged_part_is_sampled_again_when_the_run_is_planned(tmp_path):
    out = tmp_path / "br[red]x[/]"  # rich markup in a path is shown as written
    plan, rundir = _interrupted_npz_run(out)
    part = out / ".parts" / "batch-000001.npz"
    part.write_bytes(part.read_bytes()[:100])  # truncated: no zip directory
    assert [b.index for b in rundir.pending(plan.batches)] == [1]
    done = invoke("sample", "--seeds", "0-9", "--batch", "4", "--nfe", "3", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert f"-> {out} (resuming: 2 of 3 batches already done)" in done.stderr
    assert np.array_equal(np.load(out / "samples.npz")["samples"], _reference(range(10), nfe=3))


def test_a_part_damaged_after_planning_is_named_and_removed(tmp_path):
    plan, rundir = _interrupted_npz_run(tmp_path)
    part = tmp_path / ".parts" / "batch-000002.npz"
    with open(part, "r+b") as f:  # the zip directory survives, the array data does not
        f.seek(200)
        f.write(b"\xff" * 64)
    with pytest.raises(OptionError, match=r"batch-000002.npz was damaged and has been removed; rerun the "
                                          r"same command to sample batch 2 again$"):
        rundir.finish(plan.batches, {})
    assert not part.exists() and [b.index for b in rundir.pending(plan.batches)] == [2]


def _wait_for_parts(out, count, proc):
    while len(list((out / ".parts").glob("batch-*.npz"))) < count:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sample_says_what_it_kept_and_how_to_resume(tmp_path, sig, status):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffsampler", "sample", "--seeds", "0-3999", "--batch", "2", "--nfe", "200",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, not a background job
    )
    _wait_for_parts(out, 3, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    kept = len(list((out / ".parts").glob("batch-*.npz")))
    assert proc.returncode == status
    assert 3 <= kept < 2000
    assert (f"interrupted: {kept} of 2000 batches kept in {out}; rerun the same command to resume"
            in stderr.decode())
    assert "Traceback" not in stderr.decode() and not list(out.rglob(".*.tmp-*"))


def test_the_different_run_message_shows_seeds_as_ranges(tmp_path):
    assert invoke("sample", "--seeds", "0-1999,2500", "--batch", "2001", "--nfe", "1",
                  "--out", str(tmp_path)).exit_code == 0
    proc = invoke("sample", "--seeds", "0-2999", "--batch", "2001", "--out", str(tmp_path))
    assert isinstance(proc.exception, OptionError)
    assert str(proc.exception) == (
        f"{tmp_path} holds a different run (num_steps: 2 on disk, 11 now; seeds: 0-1999,2500 on disk, "
        "0-2999 now); use another --out, or delete it to start over")


def test_long_values_in_the_different_run_message_are_cut():
    from diffsampler.outputs import _differences

    (line,) = _differences({"sigmas": [float(s) for s in range(100)]}, {"sigmas": None})
    assert line.startswith("sigmas: [0.0, 1.0,") and len(line) < 2 * 80 + 30
    assert "... on disk, None now" in line


def test_conflicting_sample_flags_are_refused(tmp_path):
    cases = {
        ("--grid", "--format", "png"): "--grid writes only a grid image: drop --format png or --grid",
        ("--sigmas", "80,10,1", "--schedule", "logsnr"): "--sigmas gives the noise levels itself: drop --schedule",
        ("--sigmas", "80,10,1", "--rho", "3", "--schedule-opt", "rho=2"):
            "--sigmas gives the noise levels itself: drop --rho, --schedule-opt",
    }
    for args, message in cases.items():
        result = invoke("sample", "--seeds", "0", *args, "--out", str(tmp_path / "never"))
        assert isinstance(result.exception, OptionError) and str(result.exception) == message
    assert not (tmp_path / "never").exists()


def test_grid_with_format_grid_is_fine(tmp_path):
    result = invoke("sample", "--seeds", "0-3", "--nfe", "2", "--grid", "--format", "grid", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "grid.png"]


def test_json_on_a_complete_run_prints_its_summary(tmp_path):
    args = ("sample", "--seeds", "0-4", "--nfe", "3", "--out", str(tmp_path), "--json")
    first = invoke(*args)
    assert first.exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    summary = json.loads(again.stdout)
    assert summary["already_complete"] is True
    assert {k: summary[k] for k in ("out", "files", "nfe", "samples")} == {
        "out": str(tmp_path), "files": ["samples.npz", "grid.png (preview)", "config.json"], "nfe": 3, "samples": 5}
    assert summary["seconds"] == json.loads(first.stdout)["seconds"]


def test_half_precision_failure_names_the_dtype_and_a_retry_may_change_the_run(tmp_path):
    from diffsampler.errors import SamplingError

    failed = invoke("sample", "--seeds", "0-3", "--nfe", "3", "--dtype", "float16", "--out", str(tmp_path))
    assert isinstance(failed.exception, SamplingError)
    assert str(failed.exception) == ("the denoiser returned non-finite values at step 0 (sigma=80) with dtype "
                                     "float16: half precision overflows on this model; use float32")
    retry = invoke("sample", "--seeds", "0-3", "--nfe", "3", "--out", str(tmp_path))
    assert retry.exit_code == 0, retry.output
    assert ("held a run that left no sample (dtype: 'float16' on disk, 'float32' now): it now takes this "
            "configuration") in retry.stderr
    assert json.loads((tmp_path / "config.json").read_text())["config"]["dtype"] == "float32"
    # a run with samples is still protected
    refused = invoke("sample", "--seeds", "0-3", "--nfe", "3", "--dtype", "float64", "--out", str(tmp_path))
    assert "holds a different run (dtype: 'float32' on disk" in str(refused.exception)


def test_dtype_help_lists_every_accepted_dtype():
    from diffsampler.runs import _DTYPES

    text = " ".join(invoke("sample", "--help").output.split())
    assert all(d in text for d in _DTYPES)


def test_zip_labels_are_inside_the_zip_where_edm_reads_them(tmp_path):
    import zipfile

    args = ("sample", "--model", "digits", "--solver", "heun", "--nfe", "4", "--seeds", "0-5",
            "--labels", "random", "--format", "zip", "--out", str(tmp_path))
    proc = invoke(*args)
    assert proc.exit_code == 0, proc.output
    assert not (tmp_path / "dataset.json").exists()
    with zipfile.ZipFile(tmp_path / "images.zip") as archive:
        rows = json.loads(archive.read("dataset.json"))["labels"]
    assert [r[0] for r in rows] == [png_name(s) for s in range(6)]
    assert count_images(tmp_path / "images.zip") == 6  # the loader counts only the PNGs
    assert "nothing to do" in invoke(*args).stderr


def test_header_says_step_for_one_step(tmp_path):
    proc = invoke("sample", "--seeds", "0", "--steps", "2", "--out", str(tmp_path))
    assert proc.exit_code == 0 and ", 1 step, NFE 1," in proc.stderr


@pytest.mark.parametrize(("fmt", "name", "damage"), [
    ("npz", "samples.npz", lambda b: b[: len(b) // 2]),            # cut short
    ("npz", "samples.npz", lambda b: b"not an npz file"),           # overwritten
    ("zip", "images.zip", lambda b: b[: len(b) - 300]),             # central directory lost
    ("grid", "grid.png", lambda b: b[:-20]),                        # cut short
])
def test_a_complete_run_whose_samples_were_damaged_samples_them_again(tmp_path, fmt, name, damage):
    args = ("sample", "--seeds", "0-9", "--batch", "4", "--nfe", "3", "--format", fmt, "--out", str(tmp_path))
    assert invoke(*args).exit_code == 0
    good = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(damage(good))
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert f"but lost {name} (damaged) since: sampling again what is missing" in again.stderr
    if fmt == "npz":
        assert np.array_equal(np.load(tmp_path / name)["samples"], _reference(range(10), nfe=3))
    else:
        assert (tmp_path / name).read_bytes() == good
    assert "nothing to do" in invoke(*args).stderr


def test_samples_npz_of_another_size_counts_as_damaged(tmp_path):
    args = ("sample", "--seeds", "0-9", "--batch", "4", "--nfe", "3", "--out", str(tmp_path))
    assert invoke(*args).exit_code == 0
    np.savez(tmp_path / "samples.npz", samples=np.zeros((3, 2)), seeds=np.arange(3))
    assert "lost samples.npz (damaged)" in invoke(*args).stderr


def test_config_records_every_sampling_session_and_their_total_time(tmp_path):
    out = tmp_path / "run"
    args = ["sample", "--seeds", "0-399", "--batch", "2", "--nfe", "50", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "diffsampler", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_parts(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    kept = len(list((out / ".parts").glob("batch-*.npz")))
    (first,) = json.loads((out / "config.json").read_text())["invocations"]
    assert first["interrupted"] is True and first["batches"] == kept and first["seconds"] > 0
    assert invoke(*args).exit_code == 0
    record = json.loads((out / "config.json").read_text())
    assert record["invocations"][0] == first and record["complete"] is True
    second = record["invocations"][1]
    assert second["interrupted"] is False and second["batches"] == 200 - kept
    assert record["seconds"] == pytest.approx(first["seconds"] + second["seconds"], abs=2e-3)


def test_config_json_writes_lists_of_numbers_on_one_line(tmp_path):
    from diffsampler.jsontext import dumps

    data = {"seeds": list(range(5000)), "nested": {"sigmas": [80.0, 0.5], "rows": [[1, 2], [3]]},
            "runs": [{"seconds": 1.5}], "empty": [], "text": "a\x00b"}
    assert json.loads(dumps(data)) == data
    assert invoke("sample", "--seeds", "0-4999", "--batch", "5000", "--nfe", "1", "--out", str(tmp_path)).exit_code == 0
    text = (tmp_path / "config.json").read_text()
    assert len(text.splitlines()) < 200
    assert json.loads(text)["config"]["seeds"] == list(range(5000))


def test_json_seconds_is_the_total_and_session_seconds_the_invocations(tmp_path):
    args = ("sample", "--seeds", "0-5", "--batch", "2", "--nfe", "3", "--out", str(tmp_path), "--json")
    plan = plan_run(RunConfig(seeds=range(6), batch=2, nfe=3))
    rundir = RunDirectory(tmp_path, "npz", plan.model.shape)
    rundir.prepare(plan.record())
    rundir.record_invocation(7.5, 1, interrupted=True)  # an earlier, interrupted session
    done = invoke(*args)
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["seconds"] == pytest.approx(7.5 + summary["session_seconds"], abs=2e-3)
    assert json.loads((tmp_path / "config.json").read_text())["seconds"] == summary["seconds"]
