"""GITS from the command line (search, sample with the file, info), registration without
torch, and a two-process torchrun search that equals the single-process one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

import diffsampler as ds
from diffsampler.cli import build_app
from diffsampler.errors import OptionError

SMALL = ["--model-opt", "shape=3x4x4", "--model-opt", "components=4"]


def run(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def test_registration_does_not_import_torch():
    code = (
        "import sys, diffsampler as ds, diffsampler.plugins.gits as p\n"
        "reg = ds.discover(entry_points=False, plugins=[('gits', p)])\n"
        "assert not reg.failures, reg.failures\n"
        "assert reg.get('distiller', 'gits') and reg.get('schedule', 'gits')\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info_shows_the_options():
    res = run("info", "gits", "--json")
    assert res.exit_code == 0, res.output
    found = {c["kind"]: c for c in json.loads(res.output)}
    names = {o["name"]: o["default"] for o in found["distiller"]["options"]}
    assert names["coeff"] == 1.15 and names["teacher_steps"] == 61 and names["num_warmup"] == 256
    assert names["metric"] == "dev" and names["teacher"] == "ipndm"
    assert [o["name"] for o in found["schedule"]["options"]] == ["file"]
    assert "2405.11326" in found["distiller"]["paper"]


def test_search_then_sample_with_several_coefficients(tmp_path):
    out = tmp_path / "g.json"
    res = run("gits", "search", *SMALL, "--nfe", "4", "--num-warmup", "6", "--batch", "3",
              "--teacher-steps", "11", "--coeff", "1.1,1.2", "--device", "cpu", "--out", str(out),
              "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    files = [tmp_path / "g-coeff1.1.json", tmp_path / "g-coeff1.2.json"]
    assert summary["files"] == [str(f) for f in files] and summary["nfe"] == 4
    for f, coeff in zip(files, (1.1, 1.2), strict=True):
        data = json.loads(f.read_text())
        assert data["settings"]["coeff"] == coeff and data["num_steps"] == 5
        assert data["model"]["name"] == "gmm"
    res = run("sample", "--model", "gmm", *SMALL, "--solver", "dpmpp", "--schedule", "gits",
              "--schedule-opt", f"file={files[0]}", "--nfe", "4", "--seeds", "0-1",
              "--out", str(tmp_path / "s"), "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = run("sample", "--model", "gmm", *SMALL, "--solver", "dpmpp", "--schedule", "gits",
              "--schedule-opt", f"file={files[0]}", "--nfe", "7", "--seeds", "0-1",
              "--out", str(tmp_path / "s2"), "--device", "cpu")
    assert res.exit_code != 0
    assert "has 5 sigmas" in str(res.exception) or "has 5 sigmas" in res.output
    # the default gmm (3x32x32) is not the model the file was searched for
    res = run("sample", "--model", "gmm", "--solver", "dpmpp", "--schedule", "gits",
              "--schedule-opt", f"file={files[0]}", "--nfe", "4", "--seeds", "0-1",
              "--out", str(tmp_path / "s3"), "--device", "cpu")
    assert isinstance(res.exception, OptionError), res.output
    assert str(res.exception).endswith(
        "this run's model 'GaussianMixture' has shape (3, 32, 32): sample with --model gmm "
        "--model-opt shape=3x4x4 --model-opt components=4, or search again for this model"
    )
    assert not (tmp_path / "s3").exists()


def test_search_prints_the_phases_and_afs_keeps_the_nfe(tmp_path):
    out = tmp_path / "a.json"
    res = run("gits", "search", *SMALL, "--nfe", "4", "--afs", "--num-warmup", "4",
              "--teacher-steps", "21", "--device", "cpu", "--out", str(out))
    assert res.exit_code == 0, res.output
    for phase in ("teacher trajectories", "cost matrix", "dynamic programming", "AFS step"):
        assert phase in res.output
    data = json.loads(out.read_text())
    assert data["afs"] and data["num_steps"] == 6  # 5 searched + the free first step
    hint = (f"use: diffsampler sample --model gmm --model-opt shape=3x4x4 --model-opt components=4 "
            f"--solver ipndm --schedule gits --schedule-opt file={out} --steps 6 --afs")
    assert hint in res.output.splitlines()
    assert ds.get_solver("ipndm").nfe(6, afs=True) == 4


def test_bad_cli_input_is_one_line(tmp_path):
    res = run("gits", "search", "--steps", "5", "--nfe", "4", "--out", str(tmp_path / "x.json"))
    assert res.exit_code != 0 and "not both" in str(res.exception)
    res = run("gits", "search", "--coeff", "abc", "--out", str(tmp_path / "x.json"))
    assert res.exit_code != 0 and "--coeff" in str(res.exception)
    res = run("gits", "search", "--coeff", "1.1,,1.2", "--out", str(tmp_path / "x.json"))
    assert isinstance(res.exception, OptionError)
    assert str(res.exception) == "--coeff has an empty item in '1.1,,1.2'; expected e.g. 1.15 or 1.1,1.15,1.2"


@pytest.mark.parametrize("coeff", ["1.15", "1.1,1.2"])
def test_out_naming_a_folder_is_refused_before_the_search(tmp_path, coeff):
    folder = tmp_path / "s1"
    (folder if coeff == "1.15" else tmp_path / "s1-coeff1.2.json").mkdir()
    res = run("gits", "search", *SMALL, "--nfe", "4", "--num-warmup", "4", "--teacher-steps", "11",
              "--coeff", coeff, "--device", "cpu", "--out", str(folder))
    assert isinstance(res.exception, OptionError), res.output
    assert "is a folder; give a file name" in str(res.exception)
    # nothing written (not even the other coefficient's file), no temporary file left
    assert [p.name for p in tmp_path.iterdir()] == ["s1" if coeff == "1.15" else "s1-coeff1.2.json"]


def test_main_prints_the_refusal_as_one_line(tmp_path):
    cmd = [sys.executable, "-m", "diffsampler", "gits", "search", *SMALL, "--num-warmup", "4",
           "--teacher-steps", "11", "--device", "cpu", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith(f"--out {str(tmp_path)!r} is a folder; give a file name")


def test_default_is_the_seeds_seven_sigmas(tmp_path):
    out = tmp_path / "d.json"
    res = run("gits", "search", *SMALL, "--num-warmup", "3", "--teacher-steps", "11", "--device", "cpu",
              "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["num_steps"] == 7 and summary["nfe"] == 6 and summary["labels"] == "none"
    assert json.loads(out.read_text())["settings"]["labels"] == "none"  # gmm: unconditional
    command = summary["command"]  # the sample command, as printed without --json
    assert command.startswith("diffsampler sample ") and f"file={out}" in command
    import shlex

    sampled = run(*shlex.split(command)[1:], "--seeds", "0-1", "--out", str(tmp_path / "s"))
    assert sampled.exit_code == 0, sampled.output
    res = run("gits", "search", "--help")
    assert "default 7" in " ".join(res.output.split())


def test_labels_of_a_class_conditional_model(tmp_path):
    common = ["--model", "digits", "--steps", "4", "--num-warmup", "2", "--teacher-steps", "7",
              "--device", "cpu"]
    found = {}
    for labels in ("auto", "none", "seed", "3"):
        out = tmp_path / f"{labels}.json"
        res = run("gits", "search", *common, "--labels", labels, "--out", str(out))
        assert res.exit_code == 0, res.output
        data = json.loads(out.read_text())
        found[labels] = data["settings"]["labels"]
        flag = "" if found[labels] == "none" else f" --labels {found[labels]}"
        assert f"--steps 4{flag}" in " ".join(res.output.split())
    assert found == {"auto": "random", "none": "none", "seed": "seed", "3": "3"}
    for labels, recorded in (("auto", "random"), ("3", "3"), ("none", None)):  # sampled as searched
        res = run("sample", "--model", "digits", "--schedule", "gits", "--schedule-opt",
                  f"file={tmp_path / f'{labels}.json'}", "--seeds", "0-1", "--out", str(tmp_path / f"s-{labels}"))
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / f"s-{labels}" / "config.json").read_text())["config"]["labels"] == recorded
    res = run("gits", "search", *common, "--labels", "12", "--out", str(tmp_path / "x.json"))
    assert isinstance(res.exception, OptionError) and "class 12 is out of range" in str(res.exception)
    res = run("gits", "search", *SMALL, "--labels", "random", "--out", str(tmp_path / "x.json"), "--device", "cpu")
    assert isinstance(res.exception, OptionError) and "not class-conditional" in str(res.exception)
    assert not (tmp_path / "x.json").exists()


SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    import diffsampler as ds
    from diffsampler.distributed import setup, teardown, current
    setup("cpu")
    g = ds.get_distiller("gits", num_warmup=10, batch=2, teacher_steps=9, num_steps=4, dtype="float64")
    r = g.search(ds.get_model("gmm", shape=(3, 4, 4), components=4))
    if current().is_main:
        np.save(sys.argv[1], r.cost)
    teardown()
    """
)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    out = tmp_path / "cost.npy"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(out)], check=True, capture_output=True, timeout=120,
    )
    g = ds.get_distiller("gits", num_warmup=10, batch=2, teacher_steps=9, num_steps=4, dtype="float64")
    single = g.search(ds.get_model("gmm", shape=(3, 4, 4), components=4)).cost
    np.testing.assert_allclose(np.load(out), single, rtol=1e-12, atol=1e-14)


def test_a_fixed_class_label_is_recorded_as_the_class_searched(tmp_path):
    common = ["--model", "digits", "--model-opt", "class_label=3", "--steps", "4", "--num-warmup", "2",
              "--teacher-steps", "7", "--device", "cpu"]
    recorded = {}
    for labels in ("auto", "none"):
        out = tmp_path / f"{labels}.json"
        assert run("gits", "search", *common, "--labels", labels, "--out", str(out)).exit_code == 0
        data = json.loads(out.read_text())
        recorded[labels] = (data["settings"]["labels"], data["sigmas"])
    explicit = tmp_path / "k.json"
    assert run("gits", "search", *common[:1], "digits", *common[4:], "--labels", "3", "--out", str(explicit)).exit_code == 0
    assert recorded["auto"] == recorded["none"] == ("3", json.loads(explicit.read_text())["sigmas"])
