"""A real third-party plugin package, discovered through its entry point."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "diffsampler-example-plugin"


def _installed_in_this_env() -> bool:
    try:
        md.distribution("diffsampler-example-plugin")
    except md.PackageNotFoundError:
        return False
    return True


def _cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_example_plugin_appears_runs_and_disappears(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True,
    )
    if pip.returncode != 0:
        pytest.fail(f"could not build the example plugin: {pip.stderr[-2000:]}")

    listed = json.loads(_cli("list", "solvers", "--json", pythonpath=target).stdout)
    (row,) = [c for c in listed["components"] if c["name"] == "midpoint"]
    assert row["plugin"] == "example"
    assert row["distribution"] == "diffsampler-example-plugin" and row["version"] == "0.1.0"

    out = tmp_path / "out"
    run = _cli("sample", "--solver", "midpoint", "--nfe", "6", "--seeds", "0-3", "--out", str(out),
               pythonpath=target)
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "config.json").read_text())["nfe"] == 6

    info = json.loads(_cli("info", "midpoint", "--json", pythonpath=target).stdout)[0]
    assert info["nfe_per_step"] == 2 and info["options"][0]["name"] == "log_midpoint"

    # Uninstall: remove what pip installed; the component is gone, everything else still works.
    for entry in target.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if not _installed_in_this_env():
        listed = json.loads(_cli("list", "--json", pythonpath=target).stdout)
        assert all(c["name"] != "midpoint" for c in listed["components"])
        assert any(c["name"] == "euler" for c in listed["components"])


def test_example_solver_is_second_order():
    """The plugin's own numerics: the midpoint rule converges at order 2 on the exact GMM ODE."""
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        from diffsampler_example import Midpoint
    finally:
        sys.path.pop(0)
    import numpy as np
    import torch

    from diffsampler.plugins.models.gmm import gmm

    model = gmm(shape=(2,), components=2, spread=0.5, seed=4)
    x = torch.tensor([[3.0, -2.0]], dtype=torch.float64)

    def solve(n: int) -> torch.Tensor:
        sig = np.geomspace(5.0, 0.5, n)
        return Midpoint().sample(model, x, sig.tolist()).x

    ref = solve(4000)
    errors = [float((solve(n) - ref).norm()) for n in (9, 17, 33)]
    slopes = np.diff(np.log(errors)) / np.diff(np.log([8, 16, 32]))
    assert np.all(slopes < -1.8), (errors, slopes)
