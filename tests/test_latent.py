"""The latent plugin on tiny random-weight diffusers models saved as diffusers folders: the
discrete sigma <-> step maps, eps -> x0, classifier-free guidance, decoding, and
``diffsampler sample`` end to end (LDM unconditional; Stable Diffusion with a prompt)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from _inference import check_cpu_variants, eager_compiler

import diffsampler as ds
import diffsampler.plugins.latent as latent_plugin
from diffsampler.errors import SamplingError

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.fixture
def registry() -> ds.Registry:
    reg = ds.discover(entry_points=True, plugins=[("latent", latent_plugin)])
    ds.reset_registry(reg)
    yield reg
    ds.reset_registry(None)


def _tokenizer(folder: Path) -> None:
    """A character-level CLIP tokenizer (GPT-2/CLIP's printable byte alphabet, no merges)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(len(rest))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tok = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    _tokenizer(root / "tokenizer")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        num_attention_heads=4, max_position_embeddings=12,
    )).save_pretrained(root / "text_encoder")
    diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
    ).save_pretrained(root / "unet")
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, sample_size=16, scaling_factor=0.18215,
    ).save_pretrained(root / "vae")
    diffusers.DDPMScheduler(**BETAS).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-ldm")
    torch.manual_seed(1)
    diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).save_pretrained(root / "unet")
    diffusers.VQModel(
        in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, num_vq_embeddings=16, vq_embed_dim=3, sample_size=16,
    ).save_pretrained(root / "vqvae")
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                            beta_schedule="linear").save_pretrained(root / "scheduler")
    return root


def test_registers_without_torch() -> None:
    code = (
        "import sys, diffsampler as ds, diffsampler.plugins.latent as p\n"
        "reg = ds.discover(entry_points=False, plugins=[('latent', p)])\n"
        "assert not reg.failures, reg.failures\n"
        "assert {'latent', 'sd-v1.5', 'ldm-ffhq256'} <= {c.name for c in reg.components('model')}\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_discrete_maps_match_alphas_cumprod(ldm_folder: Path, registry: ds.Registry) -> None:
    model = ds.get_model(ldm_folder)  # found through loads_file
    assert isinstance(model, ds.TimeMapped) and isinstance(model, ds.Decodable)
    betas = np.linspace(0.0015, 0.0195, 1000)
    ac = np.cumprod(1 - betas)
    steps = torch.tensor([0.0, 1.0, 17.0, 500.0, 999.0], dtype=torch.float64)
    expected = np.sqrt((1 - ac[[0, 1, 17, 500, 999]]) / ac[[0, 1, 17, 500, 999]])
    np.testing.assert_allclose(model.t_to_sigma(steps).numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(model.sigma_to_t(torch.from_numpy(expected)).numpy(), steps.numpy(), atol=1e-7)
    assert model.sigma_min == pytest.approx(expected[0]) and model.sigma_max == pytest.approx(expected[-1])
    # between steps: log alpha is linear in the step (the seed's interpolation)
    mid = float(model.t_to_sigma(torch.tensor(17.5, dtype=torch.float64)))
    la = 0.25 * (np.log(ac[17]) + np.log(ac[18]))
    assert mid == pytest.approx(math.sqrt(math.expm1(-2 * la)), rel=1e-12)


def test_ldm_eps_to_x0_and_decode(ldm_folder: Path, registry: ds.Registry) -> None:
    model = ds.get_model("latent", path=ldm_folder)
    unet = diffusers.UNet2DModel.from_pretrained(ldm_folder / "unet").eval()
    vq = diffusers.VQModel.from_pretrained(ldm_folder / "vqvae").eval()
    x = torch.randn(2, 3, 8, 8) * 3
    sigma = torch.tensor([0.5, 3.0])
    k = model.sigma_to_t(sigma.double()).float()
    with torch.no_grad():
        eps = unet(x / torch.sqrt(1 + sigma**2).reshape(-1, 1, 1, 1), k).sample
        images = vq.decode(x).sample.clamp(-1, 1)
    torch.testing.assert_close(model(x, sigma), x - sigma.reshape(-1, 1, 1, 1) * eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.decode(x), images)
    assert model.info["nfe_per_evaluation"] == 1
    with pytest.raises(SamplingError, match="unconditional"):
        model(x, sigma, cond=[0, 1])


def test_sd_classifier_free_guidance(sd_folder: Path, registry: ds.Registry) -> None:
    rate = 4.0
    model = ds.get_model("latent", path=sd_folder, prompt="a red cube", negative_prompt="blur",
                         guidance_rate=rate)
    assert model.shape == (4, 8, 8) and model.info["nfe_per_evaluation"] == 2
    unet = diffusers.UNet2DConditionModel.from_pretrained(sd_folder / "unet").eval()
    tok = transformers.CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    enc = transformers.CLIPTextModel.from_pretrained(sd_folder / "text_encoder").eval()

    def embed(text: str) -> torch.Tensor:
        ids = tok([text], padding="max_length", max_length=12, truncation=True, return_tensors="pt").input_ids
        return enc(ids)[0].expand(2, -1, -1)

    x = torch.randn(2, 4, 8, 8) * 2
    sigma = torch.tensor([1.5, 1.5])
    k = model.sigma_to_t(sigma.double()).float()
    z = x / math.sqrt(1 + 1.5**2)
    with torch.no_grad():
        eps_c = unet(z, k, encoder_hidden_states=embed("a red cube")).sample
        eps_u = unet(z, k, encoder_hidden_states=embed("blur")).sample
    expected = x - 1.5 * (eps_u + rate * (eps_c - eps_u))
    torch.testing.assert_close(model(x, sigma), expected, rtol=1e-4, atol=1e-4)
    plain = ds.get_model("latent", path=sd_folder, prompt="a red cube", guidance_rate=1.0)
    assert plain.info["nfe_per_evaluation"] == 1
    torch.testing.assert_close(plain(x, sigma), x - 1.5 * eps_c, rtol=1e-4, atol=1e-4)
    images = model.decode(x)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1


def _run(args: list[str]) -> None:
    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, (res.output, res.exception)


def test_sample_cli_sd_and_ldm(sd_folder: Path, ldm_folder: Path, registry: ds.Registry, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    out = tmp_path / "sd"
    _run(["sample", "--model", "latent", "--model-opt", f"path={sd_folder}", "--model-opt",
          f"prompts_file={prompts}", "--labels", "random", "--seeds", "0-2", "--batch", "2",
          "--solver", "dpmpp", "--schedule", "discrete", "--nfe", "3", "--device", "cpu", "--out", str(out)])
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (3, 3, 16, 16) and np.isfinite(data["samples"]).all()
    assert set(data["labels"].tolist()) <= {0, 1, 2}
    out = tmp_path / "ldm"
    _run(["sample", "--model", "latent", "--model-opt", f"path={ldm_folder}", "--seeds", "0-1",
          "--nfe", "2", "--device", "cpu", "--out", str(out)])
    assert np.load(out / "samples.npz")["samples"].shape == (2, 3, 16, 16)


def test_user_errors(sd_folder: Path, registry: ds.Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ds.get_model("latent", path=sd_folder)
    with pytest.raises(SamplingError, match="needs a prompt"):
        model(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]))
    out = model(torch.zeros(2, 4, 8, 8), torch.tensor([1.0]), cond=["a cat", "a dog"])  # prompts as cond
    assert out.shape == (2, 4, 8, 8)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ds.MissingExtraError, match=r"diffsampler\[diffusers\]"):
        ds.get_model("latent", path=sd_folder)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_a_missing_local_folder_is_named_at_once(registry: ds.Registry, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped folder never reaches the hub (no retries): it is named as missing."""
    import huggingface_hub

    def no_hub(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "file_exists", no_hub)
    for path in ("nodir", "./runs/sd", str(tmp_path / "gone"), "a/b/c"):
        with pytest.raises(ds.ModelLoadError, match=rf"no such folder: '{re.escape(path)}' \(a diffusers folder"):
            ds.get_model("latent", path=path)
    monkeypatch.setenv("DIFFSAMPLER_SD_V15", str(tmp_path / "sd"))
    with pytest.raises(ds.ModelLoadError, match=r"^sd-v1\.5: no such folder: "):
        ds.get_model("sd-v1.5")


def test_an_unreachable_hub_is_reported_as_such(tmp_path: Path) -> None:
    res = _cli("sample", "--model", "latent", "--model-opt", "path=someorg/nosuchmodel", "--seeds", "0", "--nfe", "2",
               "--out", str(tmp_path / "o"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: nosuchmodel: 'someorg/nosuchmodel' is not in the local Hugging Face cache and HF_HUB_OFFLINE "
        "is set; pass path=/local/diffusers/folder"
    ]
    from huggingface_hub.errors import LocalEntryNotFoundError

    from diffsampler.plugins.latent.loader import _load_error

    try:  # what huggingface_hub raises when the network is down, wrapped as diffusers does
        try:
            raise LocalEntryNotFoundError("cannot find the requested files")
        except Exception as inner:
            raise OSError("someorg/m does not appear to have a file named scheduler_config.json.") from inner
    except OSError as exc:
        message = str(_load_error(exc, "someorg/m", "m", local=False))
    assert message.startswith("m: could not reach the Hugging Face hub for 'someorg/m'")
    assert "DIFFSAMPLER_OFFLINE=1" in message and "HF_HUB_OFFLINE=1" in message


def test_options_an_unconditional_model_cannot_use(ldm_folder: Path, registry: ds.Registry) -> None:
    with pytest.raises(ds.OptionError, match=r"is unconditional: guidance_rate \(classifier-free guidance\) "
                                             "needs a text model; drop it"):
        ds.get_model("latent", path=ldm_folder, guidance_rate=5)
    with pytest.raises(ds.OptionError, match="is unconditional: it takes no negative_prompt"):
        ds.get_model("latent", path=ldm_folder, negative_prompt="blur")
    model = ds.get_model("latent", path=ldm_folder, guidance_rate=1)  # no guidance: consistent
    assert model.info["guidance"] is None
    for name in ("ldm-ffhq256", "ldm-lsun-bedroom256"):
        options = {f.name for f in attrs.fields(registry.get("model", name).options)}
        assert options.isdisjoint({"guidance_rate", "prompt", "prompts_file", "negative_prompt"})
    assert "guidance_rate" in {f.name for f in attrs.fields(registry.get("model", "sd-v1.5").options)}
    with pytest.raises(ds.OptionError, match="'ldm-ffhq256' has no option 'guidance_rate'"):
        ds.get_model("ldm-ffhq256", path=ldm_folder, guidance_rate=5)


def test_prompt_choices_are_checked_in_the_words_of_prompts(sd_folder: Path, registry: ds.Registry,
                                                            tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    model = ds.get_model("latent", path=sd_folder, prompts_file=prompts)
    with pytest.raises(ds.OptionError, match=rf"^prompt 5 is out of range: prompts_file {re.escape(str(prompts))} "
                                             r"holds 3 prompts \(0\.\.2\)$"):
        model.check_labels("5")
    with pytest.raises(ds.OptionError, match=rf"^prompts_file {re.escape(str(prompts))} holds 3 prompts: "
                                             r"choose one per sample with --labels seed\|random\|K$"):
        model.check_labels(None)
    for fine in ("seed", "random", "2"):
        model.check_labels(fine)
    bare = ds.get_model("latent", path=sd_folder)
    with pytest.raises(ds.OptionError, match=r"needs a prompt: the model option prompt=\.\.\., or "
                                             r"prompts_file=\.\.\. with --labels seed\|random\|K$"):
        bare.check_labels(None)
    one = ds.get_model("latent", path=sd_folder, prompt="a cat")
    one.check_labels(None)
    with pytest.raises(ds.OptionError, match="the model has one prompt: drop --labels"):
        one.check_labels("seed")


def test_loading_is_quiet_and_the_extra_message_is_grammatical(
    sd_folder: Path, registry: ds.Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = _cli("sample", "--model", "latent", "--model-opt", f"path={sd_folder}", "--model-opt", "prompt=a cat",
               "--seeds", "0", "--nfe", "2", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    assert not [line for line in res.stderr.splitlines() if "Loading" in line or "[transformers]" in line
                or "accelerate" in line], res.stderr
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ds.MissingExtraError, match=r"^a latent model needs the 'diffusers' package"):
        ds.get_model("latent", path=sd_folder)


def test_prompt_choices_are_refused_while_planning(sd_folder: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    base = ["sample", "--model", "latent", "--model-opt", f"path={sd_folder}", "--model-opt",
            f"prompts_file={prompts}", "--seeds", "0", "--nfe", "2"]
    for extra, message in (
        (["--labels", "5"], f"prompt 5 is out of range: prompts_file {prompts} holds 3 prompts (0..2)"),
        ([], f"prompts_file {prompts} holds 3 prompts: choose one per sample with --labels seed|random|K"),
    ):
        out = tmp_path / f"run{len(extra)}"
        res = _cli(*base, *extra, "--out", str(out))
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [f"error: {message}"], res.stderr
        assert not out.exists()  # refused before the header and config.json


def test_hub_retry_lines_are_quiet_while_loading(caplog: pytest.LogCaptureFixture) -> None:
    hub_log = pytest.importorskip("huggingface_hub.utils.logging")
    from diffsampler.hub import quiet_hub_libraries

    logger = hub_log.get_logger("huggingface_hub.utils._http")  # where "Retrying in 1s" comes from
    before = hub_log.get_verbosity()
    with quiet_hub_libraries():
        logger.warning("Retrying in 1s [Retry 1/5].")
        logger.error("a real error")
    assert hub_log.get_verbosity() == before
    logger.warning("after")
    shown = [r.getMessage() for r in caplog.records]
    assert "Retrying in 1s [Retry 1/5]." not in shown and "a real error" in shown and "after" in shown


def test_a_file_suffix_is_never_a_hub_id() -> None:
    """``runs/missing.ckpt`` has the shape of a hub id (one ``/``) but no repository is named so."""
    from diffsampler.hub import looks_local

    for source in ("runs/missing.ckpt", "a/b.ZIP", "x/model.safetensors", "x/config.yaml", "x/w.pth"):
        assert looks_local(source), source
    for source in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "openai/clip-vit-base-patch32", "org/model.v2"):
        assert not looks_local(source), source


def test_channels_last_and_compiled_give_the_plain_networks_output(sd_folder: Path, registry: ds.Registry,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference options of every neural model (docs/performance.md): channels-last U-Net and
    ``compiled()`` with static shapes (Dynamo's eager backend here: tracing and wiring, in seconds)."""
    opts = dict(path=sd_folder, prompt="a red cube", guidance_rate=3.0)
    x, sigma = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 2, torch.tensor([1.5, 0.7])
    reference = ds.get_model("latent", **opts)(x, sigma)
    fast = ds.get_model("latent", channels_last=True, **opts)
    conv = next(p for p in fast.modules["unet"].parameters() if p.dim() == 4 and p.shape[-1] == 3)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(fast(x, sigma), reference, rtol=1e-5, atol=1e-5)
    calls = eager_compiler(monkeypatch)
    assert isinstance(fast, ds.Compilable)
    twin = fast.compiled()
    torch.testing.assert_close(twin(x, sigma), reference, rtol=1e-5, atol=1e-5)
    assert calls == [{"mode": "default", "dynamic": False}]
    assert twin.decode(x).shape == (2, 3, 16, 16)


def test_every_cpu_inference_variant_is_finite_and_close_to_fp32(sd_folder: Path, registry: ds.Registry) -> None:
    """`bench` variants on a guided text-to-image model (iPNDM, NFE 5, final latents against fp32
    eager), with the tolerances stated for the EDM networks in tests/test_bench.py."""
    check_cpu_variants("latent", {"path": str(sd_folder), "prompt": "a red cube"}, batch=2)


def test_an_evaluation_needs_no_host_sync_and_gathers_prompts_by_index(sd_folder: Path, registry: ds.Registry,
                                                                       tmp_path: Path, monkeypatch) -> None:
    """What a CUDA-graph capture (and a sync-free loop) needs: with prompt indices as a tensor, an
    evaluation reads no tensor value on the host (the time map and the prompt gather run where
    the tensors are); a replay with other indices then picks other prompts."""
    import diffsampler.plugins.latent.denoiser as latent_denoiser

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\nblur\na dog\n")
    model = ds.get_model("latent", path=sd_folder, prompts_file=str(prompts), guidance_rate=2.0)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    sigma = torch.full((3,), 1.2)
    expected = model(x, sigma, cond=["a dog", "a red cube", "a dog"])
    index = torch.tensor([2, 0, 2])
    model(x, sigma, cond=index)  # warm-up, as before a capture: embeddings made once

    def host_read(*_args, **_kwargs):
        raise AssertionError("a tensor value was read on the host")

    monkeypatch.setattr(latent_denoiser, "capturing", lambda: True)
    monkeypatch.setattr(latent_denoiser, "in_graph_run", lambda: True)
    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    got = model(x, sigma, cond=index)
    index.copy_(torch.tensor([1, 1, 0]))
    other = model(x, sigma, cond=index)
    monkeypatch.undo()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other, model(x, sigma, cond=["blur", "blur", "a red cube"]), rtol=1e-5, atol=1e-5)


def test_sampling_reads_no_device_value_on_the_host(sd_folder: Path, registry: ds.Registry, tmp_path: Path,
                                                    monkeypatch) -> None:
    """A guided text-to-image run with prompt indices on the meta device (tensors without values:
    any host read raises), as tests/test_no_host_sync.py does for the other families."""
    import diffsampler.plugins.latent.denoiser as latent_denoiser

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\nblur\n")
    model = ds.get_model("latent", path=sd_folder, prompts_file=str(prompts), guidance_rate=2.0).to("meta")
    monkeypatch.setattr(latent_denoiser, "capturing", lambda: True)
    monkeypatch.setattr(latent_denoiser, "in_graph_run", lambda: True)
    x = torch.empty(2, *model.shape, device="meta")
    sigmas = ds.get_schedule("polynomial", rho=7.0).sigmas(4, model.sigma_min, model.sigma_max)
    index = torch.empty(2, dtype=torch.long, device="meta")
    out = ds.get_solver("dpmpp").sample(model, x, sigmas, cond=index, check_finite=False)
    assert out.x.device.type == "meta"


def test_a_large_prompts_file_encodes_each_batch_once_with_bounded_caches(sd_folder: Path, registry: ds.Registry,
                                                                          tmp_path: Path) -> None:
    """Outside a CUDA graph a batch's prompts are encoded once per batch (the same index tensor at
    every step reuses them), never the whole file; at most 64 embeddings stay cached, the negative
    prompt among them; prompt indices must be integers."""
    from diffsampler.plugins.latent.denoiser import _KEPT_PROMPTS

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(300)))
    model = ds.get_model("latent", path=sd_folder, prompts_file=str(prompts), guidance_rate=2.0)
    calls: list[int] = []
    encode = model.encode_text
    model.encode_text = lambda batch: (calls.append(len(batch)), encode(batch))[1]
    sigmas = ds.get_schedule("polynomial", rho=7.0).sigmas(4, model.sigma_min, model.sigma_max)
    solver = ds.get_solver("euler")
    for first in range(0, 200, 2):  # 100 batches of 2 prompts, 4 steps each
        x = torch.randn(2, *model.shape) * model.sigma_max
        solver.sample(model, x, sigmas, cond=torch.tensor([first, first + 1]))
    assert max(calls) == 2 and len(calls) == 101  # the negative prompt once, then each batch once
    assert len(model._cache) <= _KEPT_PROMPTS + 1
    assert ("", torch.device("cpu")) in model._cache and not model._tables
    x = torch.randn(2, *model.shape)
    for bad in (1.5, True, torch.tensor([0.5, 1.0]), [[0, 1]]):
        with pytest.raises(SamplingError, match=r"integers|prompt indices|cond must be"):
            model(x, torch.full((2,), 1.0), cond=bad)
    model.to("meta")
    assert not model._cache
