"""Every benchmark script still runs against the current API (tiny settings; numbers not checked:
speed is measured by the benchmarks, never asserted). They ran stale once after an API change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

CASES = {
    "solver_overhead": ["--batch", "2", "--steps", "3", "--repeat", "1", "--json"],
    "writers": ["--batch", "4", "--batches", "1"],
    "edm_forward": ["--batch", "1", "--repeat", "1", "--warmup", "0", "--threads", "1", "--json"],
    "metrics_speed": ["--batch", "2", "--repeat", "1", "--warmup", "0", "--prdc-n", "64", "--dim", "16",
                      "--threads", "1", "--json"],
    "cli_startup": ["--repeat", "1", "--json"],
    "gits_table": ["--num-warmup", "4", "--teacher-steps", "13", "--seeds", "4"],
    "sfd_throughput": ["--batch", "1", "--repeat", "1", "--threads", "1", "--json"],
}


def run(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS)}
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs(name, tmp_path):
    proc = run(name, CASES[name], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "--json" in CASES[name]:
        text = proc.stdout[proc.stdout.index("{") if "{" in proc.stdout else 0:]
        assert json.loads(text[: text.rindex("}") + 1])


@pytest.mark.slow
def test_sfd_digits_study_runs(tmp_path):
    out = tmp_path / "sfd.json"
    proc = run("sfd_digits", ["--seeds", "8", "--kimg", "0.004", "--v-kimg", "0.004", "--stage2-kimg", "0.004",
                              "--batch", "4", "--nfe", "2", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["single"]) == {"2"} and set(result["variable"]) >= {"2", "3", "4", "5"}
    assert result["stage2"]["1"]["rmse"] > 0


def test_gpu_sample_paths_report_every_check(tmp_path):
    proc = run("gpu_sample_paths", ["--seeds", "4", "--batch", "2", "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 3 and all("--cuda-graph needs a CUDA device" in r["error"] for r in rows)  # CPU: refused


def test_gpu_benchmark_imports():
    proc = run("gpu_vs_seed", ["--help"], BENCHMARKS)
    assert proc.returncode == 0 and "--seed-dir" in proc.stdout, proc.stderr[-2000:]
