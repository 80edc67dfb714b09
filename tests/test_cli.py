"""The command line, run as a user runs it (a subprocess), errors included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffsampler as ds


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "diffsampler", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
    )


def _one_clear_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"diffsampler {ds.__version__}"


def test_list_json_shows_builtins_with_origin():
    proc = cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {(c["kind"], c["name"]): c for c in data["components"]}
    assert rows["solver", "euler"]["plugin"] == "solvers"
    assert rows["model", "gmm"]["distribution"] == "diffsampler"
    assert rows["schedule", "polynomial"]["version"] == ds.__version__


def test_list_reports_a_broken_plugin_and_still_works(tmp_path):
    # A real installed distribution whose entry point cannot be imported.
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[diffsampler]\nbroken = broken_plugin_missing\n")
    env = {"PYTHONPATH": str(tmp_path)}
    proc = cli("list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    (failure,) = [f for f in data["failures"] if f["plugin"] == "broken"]
    assert failure["stage"] == "import" and failure["distribution"] == "broken-plugin"
    assert any(c["name"] == "euler" for c in data["components"])
    table = cli("list", env=env)
    assert table.returncode == 0 and "failed to load" in table.stdout and "broken" in table.stdout
    assert cli("sample", "--seeds", "0", "--nfe", "2", "--out", str(tmp_path / "o"), env=env).returncode == 0


def test_info_shows_options_origin_and_paper():
    proc = cli("info", "gmm", "--json")
    assert proc.returncode == 0, proc.stderr
    (gmm,) = json.loads(proc.stdout)
    assert gmm["plugin"] == "models" and "paper" in gmm
    assert {o["name"] for o in gmm["options"]} >= {"shape", "components", "seed"}
    euler = json.loads(cli("info", "euler", "--json").stdout)[0]
    assert euler["nfe_per_step"] == 1 and euler["order"] == 1
    assert euler["recommended_schedule"] == {"name": "polynomial", "options": {"rho": 7.0}}


def test_sample_writes_grid_npz_and_config_and_is_reproducible(tmp_path):
    out = tmp_path / "run"
    proc = cli("sample", "--seeds", "0-5,9", "--batch", "3", "--nfe", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"grid.png", "samples.npz", "config.json"}
    record = json.loads((out / "config.json").read_text())
    assert record["nfe"] == 5 and record["complete"] is True
    assert record["config"]["seeds"] == [0, 1, 2, 3, 4, 5, 9]
    first = np.load(out / "samples.npz")
    assert first["samples"].shape == (7, 3, 32, 32) and first["seeds"].tolist() == [0, 1, 2, 3, 4, 5, 9]

    # The saved configuration alone reproduces the samples (and batch size does not matter).
    from diffsampler.runs import RunConfig, execute, plan_run

    config = RunConfig.from_dict({**record["config"], "batch": 7})
    got = {}
    execute(plan_run(config), on_batch=lambda b, x: got.update(zip(b.seeds, x.numpy(), strict=True)))
    again = np.stack([got[s] for s in record["config"]["seeds"]])
    assert np.array_equal(again, first["samples"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--solver", "eulr"), "unknown solver 'eulr'; did you mean 'euler'"),
        (("--opt", "max_order=3"), "has no option 'max_order'"),
        (("--model-opt", "components=zero"), "components expects int"),
        (("--seeds", "7-3"), "bad seed range '7-3'"),
        (("--seeds", "x"), "bad seed range 'x'"),
        (("--nfe", "0"), "nfe must be a positive integer"),
        (("--steps", "1"), "num_steps must be an integer >= 2"),
        (("--sigmas", "1,2,3"), "strictly decreasing"),
        (("--schedule", "nope"), "unknown schedule 'nope'"),
        (("--batch", "0"), "batch size must be a positive integer"),
        (("--dtype", "float8"), "dtype must be one of"),
        (("--precision", "fp16"), "has no option 'precision'"),
        (("--compile",), "cannot be compiled"),
        (("--cuda-graph", "--device", "cpu"), "--cuda-graph needs a CUDA device"),
    ],
)
def test_sample_user_errors_give_one_clear_line(tmp_path, args, expected):
    line = _one_clear_line(cli("sample", *args, "--out", str(tmp_path / "o")))
    assert expected in line


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = _one_clear_line(cli("sample", "--seeds", "0", "--out", str(blocker / "sub")))
    assert "cannot write to output directory" in line


def test_explicit_sigmas(tmp_path):
    proc = cli("sample", "--seeds", "0-1", "--sigmas", "80,10,1,0.1,0.002", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["sigmas"] == [80, 10, 1, 0.1, 0.002] and record["nfe"] == 4


def test_unknown_list_kind_is_a_clear_error():
    assert "unknown kind 'solverz'" in _one_clear_line(cli("list", "solverz"))


def test_info_unknown_name():
    assert "no component named 'eulerr'; did you mean 'euler'" in _one_clear_line(cli("info", "eulerr"))


def test_inference_flags_are_the_models_options(tmp_path):
    """--precision / --channels-last set the neural model's options (recorded in config.json)."""
    flags = cli("sample", "--model", "digits", "--precision", "bf16", "--channels-last", "--nfe", "2",
                "--seeds", "0-1", "--out", str(tmp_path / "a"))
    opts = cli("sample", "--model", "digits", "--model-opt", "precision=bf16", "--model-opt", "channels_last=true",
               "--nfe", "2", "--seeds", "0-1", "--out", str(tmp_path / "b"))
    assert flags.returncode == 0 and opts.returncode == 0, flags.stderr + opts.stderr
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("a", "b"))
    np.testing.assert_array_equal(a, b)
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())["config"]["model_options"]
    assert recorded["precision"] == "bf16" and recorded["channels_last"] in (True, "true")


def test_warnings_print_as_one_line_like_errors():
    import warnings

    from diffsampler.cli import _show_warning
    from diffsampler.cli._common import err_console

    with err_console.capture() as captured:
        _show_warning(UserWarning("FID of 8 samples [ref=x]"), UserWarning, "f.py", 1)
        _show_warning(FutureWarning("old API"), FutureWarning, "g.py", 2)
    assert captured.get().splitlines() == ["warning: FID of 8 samples [ref=x]", "warning: old API (FutureWarning)"]
    assert warnings.showwarning is not _show_warning  # installed by main() only


@pytest.mark.parametrize(("signum", "status", "name"), [(None, 130, "SIGINT"), (15, 143, "SIGTERM")])
def test_a_command_stopped_by_a_signal_says_so(monkeypatch, signum, status, name):
    import types

    from diffsampler.cli import main
    from diffsampler.cli._common import Terminated, err_console
    from diffsampler.registry import discover

    def long_job():
        """Stands for gits search, amed train, fid ref: nothing of its own for interruptions."""
        raise KeyboardInterrupt if signum is None else Terminated(signum)

    @ds.hookimpl
    def register_commands(app):
        app.command("long-job")(long_job)

    ds.reset_registry(discover(entry_points=True, plugins=[("t", types.SimpleNamespace(register_commands=register_commands))]))
    monkeypatch.setattr(sys, "argv", ["diffsampler", "long-job"])
    try:
        with err_console.capture() as captured, pytest.raises(SystemExit) as stop:
            main()
    finally:
        ds.reset_registry(None)
    assert stop.value.code == status
    assert captured.get().strip() == f"interrupted ({name}) before the command finished: its output is not complete"


def test_training_stop_handler_leaves_an_ignored_sigint_ignored():
    import signal

    from diffsampler.cli._common import stop_between_steps

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a script
    try:
        with stop_between_steps(show=False) as request:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM still stops between steps
            signal.raise_signal(signal.SIGTERM)
            assert request.requested() and request.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
