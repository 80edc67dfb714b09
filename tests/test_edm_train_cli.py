"""``diffsampler train-denoiser``: every option and the output are checked before the first
step (one line, exit status 2, as every other command), and short runs show their progress."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffsampler.errors import OptionError
from diffsampler.plugins.edm.train import TrainConfig, progress_printer

pytest.importorskip("sklearn")

TINY = ("--steps", "2", "--batch-size", "4", "--model-channels", "8", "--channel-mult", "1")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The one-line message of a refused run (exit 2, no traceback, no training step)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "step " not in proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_out_in_a_missing_folder_is_created_and_written(tmp_path: Path) -> None:
    out = tmp_path / "new" / "sub" / "tiny"
    proc = cli("train-denoiser", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert out.with_suffix(".json").is_file() and out.with_suffix(".safetensors").is_file()


def test_out_onto_a_folder_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "tiny.safetensors").mkdir()
    line = refused(cli("train-denoiser", "--out", str(tmp_path / "tiny"), *TINY))
    assert line == f"error: --out {str(tmp_path / 'tiny.safetensors')!r} is a folder; give a file name"
    assert not (tmp_path / "tiny.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    line = refused(cli("train-denoiser", "--out", str(tmp_path / "t"), *TINY, "--device", "cuda"))
    assert line.startswith("error: --device cuda: no CUDA device is available")


@pytest.mark.parametrize(("args", "message"), [
    (("--channel-mult", "1,2", "--resolution", "7"),
     "--resolution 7 must be a multiple of 2: --channel-mult 1,2 gives 2 levels, each after the first "
     "halving the image"),
    (("--channel-mult", "1,2", "--attn-resolutions", "5"),
     "--attn-resolutions 5: not a resolution of the network; its resolutions are 8,4"),
    (("--minutes", "-1"), "--minutes must be > 0, got -1.0"),
    (("--lr", "0"), "--lr must be > 0, got 0.0"),
    (("--threads", "-2"), "--threads must be >= 0, got -2"),
    (("--channel-mult", "1,x"), "--channel-mult expects comma-separated integers, got '1,x'"),
])
def test_nonsense_options_are_refused_in_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    line = refused(cli("train-denoiser", "--out", str(tmp_path / "t"), *TINY, *args))
    assert line == f"error: {message}"
    assert not list(tmp_path.iterdir())


def test_the_module_entry_point_refuses_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "diffsampler.plugins.edm.train", "--out", str(tmp_path / "t"),
                           "--resolution", "7"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --resolution 7 must be a multiple of 2")


def test_config_validates_every_level() -> None:
    assert TrainConfig(resolution=16, channel_mult=(1, 2, 2), attn_resolutions=(4,)).resolutions == (16, 8, 4)
    assert TrainConfig(resolution=7, channel_mult=(1,)).resolutions == (7,)
    with pytest.raises(OptionError, match="multiple of 4"):
        TrainConfig(resolution=6, channel_mult=(1, 2, 2))
    with pytest.raises(OptionError, match="--channel-mult must be one or more"):
        TrainConfig(channel_mult=())
    with pytest.raises(OptionError, match=r"--dropout must be in \[0, 1\)"):
        TrainConfig(dropout=1.0)


def test_short_runs_show_progress(tmp_path: Path) -> None:
    proc = cli("train-denoiser", "--out", str(tmp_path / "t"), *TINY[2:], "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert [line.split("  ")[0] for line in proc.stdout.splitlines() if line.startswith("step ")] == [
        "step 1/3", "step 2/3", "step 3/3"]


def test_progress_printer_prints_about_every_twentieth_and_the_last() -> None:
    lines: list[str] = []
    report = progress_printer(lines.append, seconds=1e9)
    for step in range(1, 1001):
        report(step, 1000, 0.5)
    assert len(lines) == 20 and lines[0] == "step 50/1000  loss 0.5000" and lines[-1].startswith("step 1000/1000")
    lines.clear()
    report = progress_printer(lines.append, seconds=1e9)
    for step in range(1, 8):
        report(step, 7, 0.5)
    assert len(lines) == 7


def test_ctrl_c_writes_the_network_trained_so_far(tmp_path: Path) -> None:
    import json
    import signal

    out = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "diffsampler", "train-denoiser", "--out", str(out),
                             *TINY[2:], "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert proc.stdout is not None
    first = proc.stdout.readline()  # "step K/100000  loss ..."
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert first.startswith("step ") and proc.returncode == 130, stderr
    record = json.loads(out.with_suffix(".json").read_text())
    done = record["training"]["config"]["steps_done"]
    assert 1 <= done < 100000 and out.with_suffix(".safetensors").is_file()
    assert f"wrote {out.with_suffix('.json')}" in rest
    assert stderr.strip().splitlines()[-1] == (f"interrupted at step {done}/100000; the network trained so far "
                                               f"(EMA weights) was written to {out}")


def test_ctrl_c_never_replaces_a_network_that_was_there(tmp_path: Path) -> None:
    import signal

    out = tmp_path / "t"
    out.with_suffix(".json").write_text("{}")  # a finished network's files, as far as this test cares
    proc = subprocess.Popen([sys.executable, "-m", "diffsampler", "train-denoiser", "--out", str(out),
                             *TINY[2:], "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and out.with_suffix(".json").read_text() == "{}"
    aside = tmp_path / "t-interrupted"
    assert aside.with_suffix(".json").is_file() and aside.with_suffix(".safetensors").is_file()
    assert stderr.strip().splitlines()[-1].endswith(f"was written to {aside} ({out} is kept: it was there before)")
