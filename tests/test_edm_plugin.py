"""The edm plugin: registration (torch-free), named pretrained models and where their weights
come from (path, env var, cache, download), and the ``train-denoiser`` command."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffsampler as ds
import diffsampler.plugins.edm as edm_plugin
from diffsampler.plugins.edm.checkpoint import save_network
from diffsampler.plugins.edm.precond import VPPrecond
from diffsampler.registry import Registry, discover

NAMES = ["edm-cifar10", "edm-ffhq", "edm-afhqv2", "edm-imagenet64", "edm", "digits"]


@pytest.fixture
def registry() -> Registry:
    reg = ds.discover(entry_points=False, plugins=[("edm", edm_plugin)])
    ds.reset_registry(reg)
    return reg


def test_registers_its_models(registry: Registry) -> None:
    assert not registry.failures
    names = {c["name"] for c in ds.list_components("model")}
    assert set(NAMES) <= names
    opts = {o.name for o in ds.describe_options(registry.get("model", "edm-cifar10").options)}
    assert {"path", "download", "precision", "channels_last", "sigma_min", "sigma_max"} <= opts
    assert registry.get("model", "edm").paper.startswith("Karras et al. 2022")


def test_registration_does_not_import_torch() -> None:
    code = (
        "import sys, diffsampler as ds, diffsampler.plugins.edm as p\n"
        "reg = ds.discover(entry_points=False, plugins=[('edm', p)])\n"
        "assert not reg.failures, reg.failures\n"
        "assert 'torch' not in sys.modules, 'torch imported at registration'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _tiny_cifar_pickle(path: Path) -> VPPrecond:
    """A tiny VP DDPM++ at CIFAR-10's shape, written in EDM's pickle format."""
    from test_edm_pickle import edm_records, fake_persistence, randomise  # tests/ is on sys.path

    net = randomise(VPPrecond(img_resolution=32, img_channels=3, model_channels=16,
                              channel_mult=[1], num_blocks=1, attn_resolutions=[]))
    with fake_persistence() as mod:
        path.write_bytes(pickle.dumps(dict(ema=edm_records(net, mod, "")), protocol=4))
    return net


def test_pretrained_weights_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(cache))
    monkeypatch.delenv("DIFFSAMPLER_EDM_CIFAR10", raising=False)
    monkeypatch.delenv("DIFFSAMPLER_OFFLINE", raising=False)
    server = tmp_path / "server"
    server.mkdir()
    net = _tiny_cifar_pickle(server / "edm-cifar10-32x32-uncond-vp.pkl")
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([1.0, 10.0])
    expected = net(x, sigma)

    # absent and not allowed to download: say where to put the file
    with pytest.raises(ds.ModelLoadError) as err:
        ds.get_model("edm-cifar10", download=False)
    text = str(err.value)
    assert "DIFFSAMPLER_EDM_CIFAR10" in text and str(cache / "edm" / "edm-cifar10-32x32-uncond-vp.pkl") in text
    # a network that cannot be reached
    monkeypatch.setenv("DIFFSAMPLER_EDM_BASE_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(ds.ModelLoadError, match="could not download"):
        ds.get_model("edm-cifar10")
    # downloaded (urllib, here from a file:// URL) into the cache, then read from the cache
    monkeypatch.setenv("DIFFSAMPLER_EDM_BASE_URL", server.as_uri() + "/")
    assert torch.equal(ds.get_model("edm-cifar10")(x, sigma), expected)
    assert (cache / "edm" / "edm-cifar10-32x32-uncond-vp.pkl").is_file()
    summary = {c.name: c.summary for c in discover(entry_points=False, plugins=[("edm", edm_plugin)]).components()}
    assert summary["edm-cifar10"].endswith("[weights local]")  # `diffsampler list` tells what is local
    assert summary["edm-ffhq"].endswith("[weights not local: downloaded on first use]")
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    assert torch.equal(ds.get_model("edm-cifar10")(x, sigma), expected)
    # env var and path option
    moved = tmp_path / "local.pkl"
    (cache / "edm" / "edm-cifar10-32x32-uncond-vp.pkl").rename(moved)
    monkeypatch.setenv("DIFFSAMPLER_EDM_CIFAR10", str(moved))
    assert torch.equal(ds.get_model("edm-cifar10")(x, sigma), expected)
    monkeypatch.setenv("DIFFSAMPLER_EDM_CIFAR10", str(tmp_path / "gone.pkl"))
    with pytest.raises(ds.ModelLoadError, match=r"DIFFSAMPLER_EDM_CIFAR10=.*does not exist"):
        ds.get_model("edm-cifar10")
    assert ds.get_model("edm-cifar10", path=str(moved)).shape == (3, 32, 32)
    # the right format but the wrong network
    with pytest.raises(ds.ModelLoadError, match="not the edm-ffhq network"):
        ds.get_model("edm-ffhq", path=str(moved))


def test_train_denoiser_command(tmp_path: Path, registry: Registry) -> None:
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    pytest.importorskip("sklearn")
    app = typer.Typer()
    registry.register_commands(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    out = tmp_path / "tiny"
    result = CliRunner().invoke(
        app,
        ["train-denoiser", "--out", str(out), "--steps", "3", "--batch-size", "8",
         "--model-channels", "16", "--channel-mult", "1"],
    )
    assert result.exit_code == 0, result.output
    model = ds.get_model(out.with_suffix(".json"))
    assert model.shape == (1, 8, 8) and model.label_dim == 10
    assert model.info["training"]["config"]["steps_done"] == 3


def test_save_network_writes_a_loadable_pair(tmp_path: Path) -> None:
    net = VPPrecond(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1],
                    num_blocks=1, attn_resolutions=[])
    json_path = save_network(net, tmp_path / "pair", metadata={"k": "v"})
    assert json_path.with_suffix(".safetensors").is_file()
    assert ds.get_model(json_path).shape == (1, 8, 8)


def test_missing_and_unreadable_model_files_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ds.ModelLoadError, match=r"model file 'nope\.json' does not exist"):
        ds.get_model("nope.json")
    with pytest.raises(ds.UnknownComponentError, match="did you mean 'digits'"):
        ds.get_model("digitz")  # a mistyped name stays a name
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes(b"\0" * 16)
    with pytest.raises(ds.ModelLoadError, match=r"no installed model plugin can load .*edm: .*JSON config beside"):
        ds.get_model(str(bare))


@pytest.mark.parametrize("label_dropout", [0.0, 0.1])
def test_a_class_conditional_network_without_label_dropout_needs_labels(tmp_path: Path, label_dropout: float) -> None:
    from diffsampler.plugins.edm.precond import EDMPrecond
    from diffsampler.runs import RunConfig, plan_run

    net = EDMPrecond(img_resolution=8, img_channels=1, label_dim=4, model_channels=16, channel_mult=[1],
                     num_blocks=1, attn_resolutions=[], label_dropout=label_dropout)
    path = save_network(net, tmp_path / "cond")
    unlabelled = RunConfig(model=str(path), nfe=2, seeds=range(2))
    if label_dropout:  # an unconditional mode exists: EDM's all-zero label vector
        assert plan_run(unlabelled).config.labels is None
    else:  # as the seed, which gives every class-conditional network random labels: never a zero vector
        with pytest.raises(ds.OptionError, match=r"^model 'cond' is class-conditional and was trained without "
                                                 r"label dropout \(no unconditional mode\): choose classes with "
                                                 r"--labels random\|seed\|K or the model option class_label$"):
            plan_run(unlabelled)
    for labels in ("random", "seed", "3"):
        assert plan_run(RunConfig(model=str(path), nfe=2, seeds=range(2), labels=labels)).config.labels == labels
    assert ds.get_model(path, class_label=1).check_labels(None) is None
