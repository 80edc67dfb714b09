"""Native loading of CompVis LDM checkpoints (the seed's ``lsun_bedrooms.zip`` / ``ffhq.zip``).

Ground truth: ``tests/data/tiny_ldm_vq.zip`` is a tiny LDM built and saved by the seed's own CompVis
code (random weights, a distinct EMA copy), and ``tiny_ldm_vq_reference.npz`` holds that code's
outputs: ``CFGPrecond`` denoiser values with and without ``ema_scope()`` and
``decode_first_stage`` of a fixed latent (see ``tests/data/README_tiny_ldm_vq.md``). No network.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsampler as ds
import diffsampler.plugins.latent as latent_plugin
from diffsampler.errors import ModelLoadError, OptionError

pytest.importorskip("diffusers")

DATA = Path(__file__).parent / "data"
ZIP, CONFIG, REFERENCE = DATA / "tiny_ldm_vq.zip", DATA / "tiny_ldm_vq.yaml", DATA / "tiny_ldm_vq_reference.npz"
# eps-level agreement with the seed's code: |D - D_seed| / sigma (float32 arithmetic, float64 vs
# float32 alphas_cumprod in the sigma -> step map)
EPS_TOL = 2e-5


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ds.Registry:
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path / "cache"))
    for var in ("DIFFSAMPLER_OFFLINE", "DIFFSAMPLER_LDM_FFHQ256", "DIFFSAMPLER_LDM_LSUN_BEDROOM256"):
        monkeypatch.delenv(var, raising=False)
    reg = ds.discover(entry_points=False, plugins=[("latent", latent_plugin)])
    ds.reset_registry(reg)
    yield reg
    ds.reset_registry(None)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as f:
        return dict(f)


@pytest.fixture
def tiny_as_ffhq(monkeypatch: pytest.MonkeyPatch) -> None:
    """The named ``ldm-ffhq256`` with the tiny model's architecture in place of the seed's."""
    from diffsampler.plugins.latent import compvis_config

    monkeypatch.setitem(compvis_config.SEED_CONFIGS, "ldm-ffhq256", compvis_config.read_config(CONFIG))


def _eps_error(model: ds.Denoiser, ref: dict[str, np.ndarray], key: str) -> float:
    worst = 0.0
    for sigma, x, expected in zip(ref["sigma"], ref["x"], ref[key], strict=True):
        with torch.no_grad():
            d = model(torch.from_numpy(x), torch.tensor(float(sigma))).numpy()
        worst = max(worst, float(np.abs(d - expected).max() / sigma))
    return worst


def test_the_fixture_needs_the_inert_lightning_names() -> None:
    """The fixture is a real Lightning checkpoint: plain weights-only loading refuses its callback key."""
    with zipfile.ZipFile(ZIP) as zf, zf.open("model.ckpt") as f:
        data = f.read()
    with pytest.raises(pickle.UnpicklingError, match="pytorch_lightning"):
        torch.load(io.BytesIO(data), weights_only=True)


def test_ema_weights_match_the_seed_code(registry: ds.Registry, reference: dict[str, np.ndarray]) -> None:
    model = ds.get_model("latent", path=ZIP, config=CONFIG)
    assert model.info["weights"].startswith("ema") and model.shape == (3, 8, 8)
    assert _eps_error(model, reference, "denoised_ema") < EPS_TOL
    assert model.sigma_min == pytest.approx(float(reference["seed_sigma_min"]), rel=1e-5)
    assert model.sigma_max == pytest.approx(float(reference["seed_sigma_max"]), rel=1e-5)


def test_raw_weights_match_the_seed_code_outside_ema_scope(registry: ds.Registry,
                                                            reference: dict[str, np.ndarray]) -> None:
    raw = ds.get_model("latent", path=ZIP, config=CONFIG, ema=False)
    assert raw.info["weights"].startswith("raw")
    assert _eps_error(raw, reference, "denoised_raw") < EPS_TOL
    # the two weight sets give clearly different networks: selecting the right one matters
    assert _eps_error(raw, reference, "denoised_ema") > 0.1


def test_decoding_quantizes_like_the_seed_code(registry: ds.Registry, reference: dict[str, np.ndarray]) -> None:
    model = ds.get_model("latent", path=ZIP, config=CONFIG)
    images = model.decode(torch.from_numpy(reference["latent"])).numpy()
    assert images.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(images, np.clip(reference["decoded"], -1, 1), atol=2e-5, rtol=0)


def test_named_model_reads_the_env_var_and_the_unpacked_ckpt(registry: ds.Registry, tiny_as_ffhq: None,
                                                              reference: dict[str, np.ndarray], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFSAMPLER_LDM_FFHQ256", str(ZIP))
    model = ds.get_model("ldm-ffhq256")
    assert _eps_error(model, reference, "denoised_ema") < EPS_TOL
    assert model.info["seed_checkpoint"] == "https://ommer-lab.com/files/latent-diffusion/ffhq.zip"
    unpacked = next((tmp_path / "cache" / "latent" / "extracted").glob("tiny_ldm_vq-*/model.ckpt"))
    monkeypatch.setenv("DIFFSAMPLER_LDM_FFHQ256", str(unpacked))  # model.ckpt itself, as the seed keeps it
    assert _eps_error(ds.get_model("ldm-ffhq256", ema=False), reference, "denoised_raw") < EPS_TOL


def test_named_model_downloads_the_seed_zip_into_the_cache(registry: ds.Registry, tiny_as_ffhq: None,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffsampler.weights as weights

    fetched: list[str] = []

    def fake_download(url: str, target: Path, **_: object) -> None:
        fetched.append(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ZIP, target)

    monkeypatch.setattr(weights, "download", fake_download)
    ds.get_model("ldm-ffhq256")
    assert fetched == ["https://ommer-lab.com/files/latent-diffusion/ffhq.zip"]
    latent_cache = tmp_path / "cache" / "latent"
    assert (latent_cache / "ffhq" / "model.ckpt").is_file() and not (latent_cache / "ffhq.zip").exists()
    ds.get_model("ldm-ffhq256")  # the unpacked checkpoint is reused
    assert len(fetched) == 1


def test_offline_refusal_is_one_line(registry: ds.Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        ds.get_model("ldm-lsun-bedroom256")
    msg = str(info.value)
    assert "\n" not in msg and "DIFFSAMPLER_OFFLINE is set" in msg
    assert "https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip" in msg
    assert "DIFFSAMPLER_LDM_LSUN_BEDROOM256" in msg
    with pytest.raises(ModelLoadError, match="download=False"):
        ds.get_model("ldm-lsun-bedroom256", download=False)


class Foreign:
    """A class a checkpoint may pickle; loading must not construct it."""


def _one_line_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        ds.get_model("latent", path=path, config=CONFIG)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path.name} "), msg  # the file named once, not "x: x is"
    return msg


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign-weights", "foreign-object", "no-member"])
def test_a_damaged_or_foreign_checkpoint_is_one_clear_line(registry: ds.Registry, tmp_path: Path,
                                                           kind: str) -> None:
    path = tmp_path / ("model.zip" if kind == "no-member" else "model.ckpt")
    with zipfile.ZipFile(ZIP) as zf:
        ckpt = zf.read("model.ckpt")
    if kind == "truncated":
        path.write_bytes(ckpt[: len(ckpt) // 2])
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif kind == "foreign-weights":  # a plain torch file of some other network
        torch.save({"state_dict": {"conv.weight": torch.zeros(2, 2)}}, path)
    elif kind == "foreign-object":
        torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "extra": Foreign()}, path)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("README.txt", "no checkpoint here")
    msg = _one_line_error(path)
    expected = {"truncated": "damaged or not a PyTorch checkpoint", "garbage": "damaged or not a PyTorch checkpoint",
                "foreign-weights": "not a CompVis latent-diffusion checkpoint",
                "foreign-object": "Foreign, which diffsampler does not run", "no-member": "no single model.ckpt"}
    assert expected[kind] in msg, msg


def test_the_wrong_architecture_or_a_missing_ema_is_named(registry: ds.Registry, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not fit the U-Net config") as info:
        ds.get_model("ldm-ffhq256", path=ZIP)  # the seed's 224-channel config on the tiny weights
    assert "\n" not in str(info.value)
    with zipfile.ZipFile(ZIP) as zf:
        ckpt = zf.read("model.ckpt")
    (tmp_path / "full.ckpt").write_bytes(ckpt)
    from diffsampler.plugins.latent.compvis import read_state_dict

    sd = read_state_dict(tmp_path / "full.ckpt", what="t")
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("model_ema.")}}, tmp_path / "raw.ckpt")
    with pytest.raises(ModelLoadError, match="no EMA weights"):
        ds.get_model("latent", path=tmp_path / "raw.ckpt", config=CONFIG)
    ds.get_model("latent", path=tmp_path / "raw.ckpt", config=CONFIG, ema=False)


def test_config_is_required_and_checked(registry: ds.Registry, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="pass config="):
        ds.get_model("latent", path=ZIP)
    text = CONFIG.read_text().replace("cond_stage_config: __is_unconditional__", "cond_stage_config: {}")
    (tmp_path / "cond.yaml").write_text(text)
    with pytest.raises(ModelLoadError, match="a conditional model"):
        ds.get_model("latent", path=ZIP, config=tmp_path / "cond.yaml")


def test_diffusers_folders_take_no_ema_choice(registry: ds.Registry, tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(OptionError, match="diffusers folder"):
        ds.get_model("ldm-ffhq256", path=tmp_path, ema=False)


@pytest.mark.parametrize("zip_format", [True, False])
def test_lightning_and_numpy_names_are_inert_in_both_torch_formats(
        registry: ds.Registry, reference: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        zip_format: bool) -> None:
    """A callback instance under a Lightning class name and numpy scalars beside the weights load as
    inert stand-ins (never imported), in torch's zip format and in its pre-1.6 format."""
    from diffsampler.plugins.latent.compvis import read_state_dict

    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.early_stopping")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    early = type("EarlyStopping", (), {"__module__": names[-1]})
    sys.modules[names[-1]].EarlyStopping = early  # type: ignore[attr-defined]
    stopper = early()
    stopper.best = np.float64(0.5)
    with zipfile.ZipFile(ZIP) as zf:
        (tmp_path / "full.ckpt").write_bytes(zf.read("model.ckpt"))
    sd = read_state_dict(tmp_path / "full.ckpt", what="t")
    path = tmp_path / "resaved.ckpt"
    torch.save({"state_dict": sd, "callbacks": {early: stopper}, "score": np.float32(1.5)}, path,
               _use_new_zipfile_serialization=zip_format)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    model = ds.get_model("latent", path=path, config=CONFIG)
    assert _eps_error(model, reference, "denoised_ema") < EPS_TOL
    assert "pytorch_lightning" not in sys.modules


@pytest.fixture
def split_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny LDM without its first stage, and that first stage as a ``vq-f4.zip``-style
    checkpoint (bare ``encoder.*``/``decoder.*``/``quantize.*`` keys, plus a loss weight)."""
    from diffsampler.plugins.latent.compvis import read_state_dict

    sd = read_state_dict(ZIP, what="t")
    ldm = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    vq = {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")}
    vq["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": ldm, "global_step": 1}, tmp_path / "ldm-only.ckpt")
    torch.save({"state_dict": vq}, tmp_path / "vq.ckpt")
    return tmp_path / "ldm-only.ckpt", tmp_path / "vq.ckpt"


def test_a_checkpoint_without_first_stage_takes_the_vq_checkpoint(
        registry: ds.Registry, reference: dict[str, np.ndarray], split_checkpoints: tuple[Path, Path]) -> None:
    ldm, vq = split_checkpoints
    with pytest.raises(ModelLoadError, match="pass vq_path=") as info:
        ds.get_model("latent", path=ldm, config=CONFIG)
    assert "\n" not in str(info.value)
    model = ds.get_model("latent", path=ldm, config=CONFIG, vq_path=vq)
    assert _eps_error(model, reference, "denoised_ema") < EPS_TOL
    images = model.decode(torch.from_numpy(reference["latent"])).numpy()
    np.testing.assert_allclose(images, np.clip(reference["decoded"], -1, 1), atol=2e-5, rtol=0)


def test_named_model_finds_the_seed_vq_f4_first_stage(registry: ds.Registry, tiny_as_ffhq: None,
                                                       reference: dict[str, np.ndarray],
                                                       split_checkpoints: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ldm, vq = split_checkpoints
    monkeypatch.setenv("DIFFSAMPLER_LDM_FFHQ256", str(ldm))
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        ds.get_model("ldm-ffhq256")
    msg = str(info.value)
    assert "\n" not in msg and "vq-f4.zip" in msg and "DIFFSAMPLER_LDM_VQ_F4" in msg
    assert "https://ommer-lab.com/files/latent-diffusion/vq-f4.zip" in msg
    monkeypatch.setenv("DIFFSAMPLER_LDM_VQ_F4", str(vq))
    model = ds.get_model("ldm-ffhq256")
    assert model.info["first_stage"] == str(vq)
    images = model.decode(torch.from_numpy(reference["latent"])).numpy()
    np.testing.assert_allclose(images, np.clip(reference["decoded"], -1, 1), atol=2e-5, rtol=0)


def test_the_seeds_ldm_command_runs(registry: ds.Registry, tmp_path: Path) -> None:
    """dpmpp order 3 on noise prediction with the discrete schedule (the seed's LDM flags): the
    step of sigma_min is 0 exactly (it came back as -2e-16, which `discrete` refused)."""
    model = ds.get_model("latent", path=ZIP, config=CONFIG)
    assert float(model.sigma_to_t(torch.tensor(model.sigma_min, dtype=torch.float64))) == 0.0
    cmd = [sys.executable, "-m", "diffsampler", "sample", "--model", "latent", "--model-opt", f"path={ZIP}",
           "--model-opt", f"config={CONFIG}", "--solver", "dpmpp", "--max-order", "3", "--no-predict-x0",
           "--schedule", "discrete", "--nfe", "5", "--seeds", "0-1", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(tmp_path / "run" / "samples.npz") as f:
        assert f["samples"].shape == (2, 3, 16, 16) and np.isfinite(f["samples"]).all()


# -- audit a2: loader messages and where a checkpoint is looked for ------------------------------------
def _ckpt_bytes() -> bytes:
    with zipfile.ZipFile(ZIP) as zf:
        return zf.read("model.ckpt")


def test_config_given_a_binary_file_says_which_option_takes_what(registry: ds.Registry, tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(_ckpt_bytes())
    with pytest.raises(ModelLoadError) as info:  # path and config swapped
        ds.get_model("latent", path=CONFIG, config=tmp_path / "model.ckpt")
    assert str(info.value) == (f"config {tmp_path / 'model.ckpt'}: not a YAML text file (path= takes the "
                               ".ckpt/.zip, config= its YAML)")


@pytest.mark.parametrize(("path", "opts"), [("runs/missing.ckpt", {}), ("missing.zip", {}), ("bad/missing.zip", {}),
                                            ("bad/missing", {"ema": False}), ("missing", {"config": str(CONFIG)}),
                                            ("org/missing", {"vq_path": "vq.ckpt"})])
@pytest.mark.parametrize("offline", [False, True])
def test_a_missing_checkpoint_is_named_missing_not_a_hub_id(registry: ds.Registry, monkeypatch: pytest.MonkeyPatch,
                                                            path: str, opts: dict[str, object], offline: bool) -> None:
    import huggingface_hub

    def no_hub(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "file_exists", no_hub)
    if offline:
        monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        ds.get_model("latent", path=path, **opts)
    assert str(info.value) == (f"{Path(path).name}: path={path!r} does not exist (a CompVis model.ckpt / .zip "
                               "or a diffusers folder)")


def test_an_unused_vq_path_is_said_once(registry: ds.Registry, tmp_path: Path) -> None:
    (tmp_path / "rand.ckpt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"^vq_path ignored: tiny_ldm_vq.zip carries its own first_stage_model\.\* "
                                         r"\(which wins, as in the seed\)$") as record:
        ds.get_model("latent", path=ZIP, config=CONFIG, vq_path=tmp_path / "rand.ckpt")
    assert len(record) == 1


def test_a_folder_holding_model_ckpt_loads_as_that_checkpoint(registry: ds.Registry, tiny_as_ffhq: None,
                                                                reference: dict[str, np.ndarray],
                                                                tmp_path: Path) -> None:
    """Where the seed's download script leaves the checkpoint: ``models/ldm/<name>/model.ckpt``."""
    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "model.ckpt").write_bytes(_ckpt_bytes())
    shutil.copyfile(CONFIG, folder / "config.yaml")
    for model in (ds.get_model("latent", path=folder, config=CONFIG), ds.get_model("ldm-ffhq256", path=folder)):
        assert model.info["format"] == "CompVis checkpoint"
        assert _eps_error(model, reference, "denoised_ema") < EPS_TOL


def test_get_model_takes_a_compvis_checkpoint_file(registry: ds.Registry, reference: dict[str, np.ndarray],
                                                   tmp_path: Path) -> None:
    """``ds.get_model("x.ckpt", config=...)`` (and ``--model x.ckpt``) reach the latent plugin's file loader."""
    from diffsampler.plugins.latent.factories import loads_file

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(_ckpt_bytes())
    torch.save({"state_dict": {"conv.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    (tmp_path / "pics.zip").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "pics.zip", "w") as zf:
        zf.writestr("0.png", b"")
    assert loads_file(ckpt) and loads_file(ZIP) and loads_file(tmp_path)
    assert not loads_file(tmp_path / "other.ckpt") and not loads_file(tmp_path / "pics.zip") and not loads_file(CONFIG)
    for path in (ckpt, ZIP):
        assert _eps_error(ds.get_model(path, config=CONFIG), reference, "denoised_ema") < EPS_TOL


def test_a_truncated_zip_and_a_plain_pickle_are_named_as_such(registry: ds.Registry, tmp_path: Path) -> None:
    (tmp_path / "part.zip").write_bytes(ZIP.read_bytes()[:200_000])
    assert _one_line_error(tmp_path / "part.zip") == "part.zip is a damaged or truncated zip (incomplete download?)"
    with open(tmp_path / "plain.ckpt", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Detected pickle protocol 4" warning stays inside
        assert "damaged or not a PyTorch checkpoint" in _one_line_error(tmp_path / "plain.ckpt")


def test_a_zip_placed_in_the_cache_is_kept(registry: ds.Registry, tiny_as_ffhq: None, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline message suggests putting the seed's zip at the cache path: it is unpacked, not deleted."""
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    placed = tmp_path / "cache" / "latent" / "ffhq.zip"
    placed.parent.mkdir(parents=True)
    shutil.copyfile(ZIP, placed)
    ds.get_model("ldm-ffhq256")
    assert placed.is_file() and (placed.parent / "ffhq" / "model.ckpt").is_file()


def test_info_says_where_the_weights_would_come_from(registry: ds.Registry, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from diffsampler.plugins.latent import NAMED, _where

    entry = NAMED["ldm-ffhq256"]
    assert _where(entry) == "seed checkpoint not local: downloaded on first use"
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    assert _where(entry) == "seed checkpoint not local: a download is refused offline (DIFFSAMPLER_OFFLINE)"
    monkeypatch.setenv("DIFFSAMPLER_LDM_FFHQ256", str(tmp_path / "nothere.zip"))
    assert _where(entry) == f"$DIFFSAMPLER_LDM_FFHQ256 names a missing {tmp_path / 'nothere.zip'}"
    monkeypatch.setenv("DIFFSAMPLER_LDM_FFHQ256", str(ZIP))
    assert _where(entry) == "local copy set"


def test_noise_levels_past_the_training_steps_warn_at_both_ends(registry: ds.Registry) -> None:
    """The seed extrapolates the network time at both ends (``interpolate_fn``); both are said."""
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2  # the config's schedule
    ac = torch.cumprod(1 - betas, 0)
    top, bottom = float(((1 - ac[-1]) / ac[-1]).sqrt()), float(((1 - ac[0]) / ac[0]).sqrt())
    assert (round(top, 2), round(bottom, 5)) == (83.82, 0.03876)
    with pytest.warns(UserWarning, match=rf"^sigma_max 100 is above the network's last step \({top:.4g}\)"):
        model = ds.get_model("latent", path=ZIP, config=CONFIG, sigma_max=100.0)
    assert model.sigma_max == 100.0 and float(model.sigma_to_t(torch.tensor(100.0))) > 999
    with pytest.warns(UserWarning, match=rf"^sigma_min 0\.001 is below the network's step 0 \({bottom:.4g}\)"):
        ds.get_model("latent", path=ZIP, config=CONFIG, sigma_min=0.001)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.get_model("latent", path=ZIP, config=CONFIG)  # the model's own range: no warning
