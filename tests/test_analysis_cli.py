"""``diffsampler analyze``: the analyses registry, the files it writes, errors, other models."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.plugins.analysis import geometry as g
from diffsampler.plugins.analysis.collect import collect
from diffsampler.plugins.analysis.registry import (
    ANALYSES,
    AnalysisResult,
    analysis_names,
    get_analysis,
    register_analysis,
)
from diffsampler.plugins.analysis.run import analyze, write_result

SMALL = ("--model", "gmm", "--model-opt", "shape=3,4,4", "--model-opt", "components=3",
         "--steps", "7", "--seeds", "0-5")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_registry_names_the_four_analyses_and_refuses_unknown_and_duplicate_names():
    assert {"deviation", "denoising", "pca", "curvature"} <= set(analysis_names())
    with pytest.raises(ds.OptionError, match="unknown analysis 'nope'; known: deviation"):
        get_analysis("nope")

    class Impostor:
        name = "pca"

    with pytest.raises(ValueError, match="registered twice"):
        register_analysis(Impostor)
    assert ANALYSES["pca"] is not Impostor


@pytest.mark.parametrize("kind", ["deviation", "denoising", "pca", "curvature"])
def test_cli_writes_plots_and_numbers(kind, tmp_path):
    extra = ("--param", "substeps=2") if kind == "curvature" else ()
    proc = cli("analyze", kind, *SMALL, *extra, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for suffix in ("png", "pdf", "csv", "json"):
        path = tmp_path / f"{kind}.{suffix}"
        assert path.stat().st_size > 0
    assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / f"{kind}.pdf").read_bytes()[:5] == b"%PDF-"
    rows = list(csv.DictReader((tmp_path / f"{kind}.csv").open()))
    data = json.loads((tmp_path / f"{kind}.json").read_text())
    assert data["analysis"] == kind and data["config"]["num_steps"] == 7
    assert data["config"]["seeds"] == list(range(6))
    expected_rows = {"deviation": 7, "denoising": 7, "pca": 5, "curvature": 6}[kind]
    assert len(rows) == expected_rows
    assert set(rows[0]) == set(data["table"])
    assert f"wrote {kind}.csv" in proc.stdout


def test_deviation_numbers_match_a_trajectory_sampled_independently(tmp_path):
    proc = cli("analyze", "deviation", *SMALL, "--solver", "heun", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "deviation.json").read_text())
    model = ds.get_model("gmm", shape=(3, 4, 4), components=3)
    noise = ds.seed_noise(range(6), model.shape, dtype=torch.float64)
    result = ds.sample(noise, model=model, solver="heun", num_steps=7, return_trajectory=True)
    expected = g.deviation(result.trajectory, relative=True)
    np.testing.assert_allclose(data["per_seed"]["relative_deviation"], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(data["config"]["sigmas"], result.sigmas.numpy())
    assert data["summary"]["max_relative_deviation_mean"] == pytest.approx(expected.mean(1).max())


def test_cli_errors_are_one_line(tmp_path):
    proc = cli("analyze", "pca", *SMALL, "--param", "nope=1", "--out", str(tmp_path))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pca.json").exists()


def test_missing_matplotlib_names_the_plot_extra(monkeypatch):
    from diffsampler.plugins.analysis.plotting import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ds.MissingExtraError, match=r"diffsampler\[plot\]") as info:
        pyplot()
    assert info.value.package == "matplotlib" and info.value.extra == "plot"
    assert str(info.value) == ("diffsampler analyze --plot (the default) needs the 'matplotlib' package: "
                               "pip install 'diffsampler[plot]'")


def test_numbers_are_written_without_plots(tmp_path):
    setup = collect(model="gmm", model_options={"shape": (2, 3)}, num_steps=5, seeds=[0, 1])
    result, options = analyze("deviation", setup, {"denoising": "false"})
    files = write_result(tmp_path, result, config=setup.config, options=options, plot=False)
    assert sorted(p.name for p in files) == ["deviation.csv", "deviation.json"]
    assert "denoising_relative_deviation_mean" not in result.table


def test_the_neural_digits_model():
    setup = collect(model="digits", num_steps=6, seeds=range(3))
    assert setup.trajectory.dtype == torch.float32 and setup.trajectory.shape == (6, 3, 1, 8, 8)
    result, _ = analyze("pca", setup)
    explained = result.arrays["explained"]
    np.testing.assert_allclose(explained.sum(1), 1.0, atol=1e-9)
    assert (result.table["cumulative_share_mean"] > 0.99).all()
    den, _ = analyze("denoising", setup, {"images": 1})
    assert den.arrays["_images_denoising"].shape == (6, 1, 1, 8, 8)


class _Latent:
    """A latent model: analyses must stay in its own space and never decode."""

    def __init__(self) -> None:
        self.inner = ds.get_model("gmm", shape=(2, 3), components=2)
        self.shape, self.sigma_min, self.sigma_max = (2, 3), 0.002, 80.0

    def __call__(self, x, sigma, cond=None):
        return self.inner(x, sigma, cond)

    def decode(self, latent):  # pragma: no cover - must not be called
        raise AssertionError("the analysis decoded the latent")


def test_latent_models_are_analysed_in_their_own_space():
    setup = collect(model=_Latent(), num_steps=5, seeds=[0, 1], dtype="float64")
    assert setup.trajectory.shape == (5, 2, 2, 3)
    result, _ = analyze("curvature", setup, {"substeps": 1})
    assert isinstance(result, AnalysisResult) and result.table["angle_deg_mean"].shape == (4,)


def test_registering_the_commands_imports_no_torch():
    code = (
        "import sys, typer\n"
        "import diffsampler.plugins.analysis as p\n"
        "app = typer.Typer()\n"
        "p.register_commands(app)\n"
        "import diffsampler.plugins.analysis.kinds, diffsampler.plugins.analysis.run\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_the_analyses(tmp_path: Path):
    proc = cli("analyze", "--help")
    assert proc.returncode == 0
    for kind in ("deviation", "denoising", "pca", "curvature"):
        assert kind in proc.stdout


def test_an_edm_network_file_and_the_empirical_model(tmp_path):
    from diffsampler.plugins.edm.checkpoint import save_network
    from diffsampler.plugins.edm.precond import VPPrecond

    torch.manual_seed(0)
    net = VPPrecond(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1],
                    num_blocks=1, attn_resolutions=[])
    path = save_network(net, tmp_path / "tiny")
    for model in (str(path), "empirical"):
        setup = collect(model=model, num_steps=5, seeds=[0, 1])
        assert setup.trajectory.shape == (5, 2, 1, 8, 8)
        result, _ = analyze("deviation", setup)
        rel = result.arrays["relative_deviation"]
        assert rel[0].max() < 1e-12 and rel[-1].max() < 1e-12 and np.isfinite(rel).all()
        np.testing.assert_allclose(rel, g.deviation(setup.trajectory, relative=True))


def test_help_shows_the_plot_extra_and_afs():
    """Rich markup used to swallow ``[plot]`` in the help ("(needs )")."""
    proc = subprocess.run([sys.executable, "-m", "diffsampler", "analyze", "curvature", "--help"],
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert proc.returncode == 0, proc.stderr
    assert "(needs the [plot] extra)" in proc.stdout
    assert "--afs" in proc.stdout and "--no-afs" in proc.stdout


def test_afs_reaches_the_solver_and_the_record(tmp_path):
    plain = collect(model="gmm", model_options={"shape": (2, 3)}, num_steps=5, seeds=[0, 1])
    afs = collect(model="gmm", model_options={"shape": (2, 3)}, num_steps=5, seeds=[0, 1], afs=True)
    assert (plain.nfe, afs.nfe) == (4, 3)  # Euler: the first step is free with AFS
    assert plain.config["afs"] is False and afs.config["afs"] is True
    assert not torch.allclose(plain.trajectory[1], afs.trajectory[1])


def test_an_amed_predictor_trained_with_afs_is_analysed_with_afs(tmp_path):
    """AMED trains with AFS by default; analyze had no --afs, so such a predictor was unusable."""
    import math

    from diffsampler.plugins.amed.predictor import AMEDPredictor, model_identity

    digits = ds.get_model("digits")
    settings = dict(solver="ipndm", num_steps=4, afs=True, scale_dir=0.0, scale_time=0.0, max_order=3,
                    predict_x0=True, lower_order_final=True, schedule="polynomial",
                    schedule_options={"rho": 7.0})
    sigmas = ds.get_schedule("polynomial", rho=7.0).sigmas(4, digits.sigma_min, digits.sigma_max)
    settings["sigmas"] = sigmas.tolist()
    pred = AMEDPredictor(settings, model_identity(digits, name="digits"), hidden_dim=8)
    with torch.no_grad():  # a constant r = 0.5
        pred.fc_r.weight.zero_()
        pred.fc_r.bias.fill_(math.log(0.5 / 0.5))
    path = tmp_path / "p.safetensors"
    pred.save(path)
    args = ("analyze", "deviation", "--model", "digits", "--solver", "amed-ipndm", "--opt", f"predictor={path}",
            "--steps", "4", "--seeds", "0-1", "--no-plot")
    refused = cli(*args, "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and "trained with AFS" in refused.stderr, refused.stderr
    done = cli(*args, "--afs", "--out", str(tmp_path / "yes"))
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "yes" / "deviation.json").read_text())["config"]
    assert config["afs"] is True and config["solver"] == "amed-ipndm"


def test_labels_reach_the_model_per_seed_as_in_sample(tmp_path):
    from diffsampler.runs import labels_for

    digits = ds.get_model("digits")
    setup = collect(model="digits", num_steps=5, seeds=range(5), labels="random", batch=2)
    expected = labels_for("random", digits, range(5), model_name="digits")
    assert setup.cond.tolist() == expected and setup.config["labels"] == "random"
    sigmas = torch.as_tensor(setup.sigmas)
    noise = ds.seed_noise(range(5), digits.shape) * float(sigmas[0])
    by_hand = ds.get_solver("euler").sample(digits, noise, setup.sigmas, cond=torch.tensor(expected),
                                            return_trajectory=True).trajectory
    torch.testing.assert_close(setup.trajectory, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(collect(model="digits", num_steps=5, seeds=range(5)).trajectory, by_hand)
    for bad, message in (("cat", "labels must be 'random', 'seed' or a class index, got 'cat'"),
                         ("12", "class 12 is out of range: model 'digits' has 10 (0-9)")):
        proc = cli("analyze", "deviation", "--model", "digits", "--steps", "4", "--seeds", "0-1",
                   "--labels", bad, "--no-plot", "--out", str(tmp_path / bad))
        assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}", proc.stderr
    proc = cli("analyze", "deviation", *SMALL, "--labels", "random", "--no-plot", "--out", str(tmp_path / "g"))
    assert proc.returncode == 2 and "not class-conditional: drop --labels" in proc.stderr
