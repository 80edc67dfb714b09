"""The guided plugin: ADM U-Net + noisy-image classifier (classifier guidance) and the
Consistency-Models EDM U-Net, on tiny random-weight networks saved as OpenAI-style .pt files."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from _inference import check_cpu_variants, eager_compiler

import diffsampler as ds
import diffsampler.plugins.guided as guided_plugin
from diffsampler.errors import ModelLoadError
from diffsampler.plugins.guided.unet import ADMClassifier, ADMUNet

CLASSES = 4
UNET = dict(
    image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
    attention_resolutions=[2], channel_mult=[1, 2], num_classes=CLASSES, num_heads=2,
    num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
)
CLASSIFIER = dict(
    image_size=16, in_channels=3, model_channels=32, out_channels=CLASSES, num_res_blocks=1,
    attention_resolutions=[2], channel_mult=[1, 2], num_head_channels=16,
    use_scale_shift_norm=True, resblock_updown=True,
)
CM = dict(
    image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
    attention_resolutions=[2], channel_mult=[1, 2], num_classes=None, num_head_channels=16,
    use_scale_shift_norm=False, resblock_updown=True, attention_dims=2, attention_order="qkv_first",
)


@pytest.fixture
def registry() -> ds.Registry:
    reg = ds.discover(entry_points=True, plugins=[("guided", guided_plugin)])
    ds.reset_registry(reg)
    yield reg
    ds.reset_registry(None)


def _save(module: torch.nn.Module, path: Path, fmt: str, network: dict, precond: str | None = None) -> Path:
    torch.save(module.state_dict(), path)
    cfg = {"format": fmt, "network": network}
    if precond:
        cfg["precond"] = precond
    path.with_suffix(".json").write_text(json.dumps(cfg))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    torch.manual_seed(0)
    unet, classifier = ADMUNet(**UNET).eval(), ADMClassifier(**CLASSIFIER).eval()
    return dict(
        unet=unet, classifier=classifier,
        path=_save(unet, tmp_path / "adm.pt", "diffsampler.adm", UNET, "vp"),
        cpath=_save(classifier, tmp_path / "cls.pt", "diffsampler.adm-classifier", CLASSIFIER),
    )


def vp_t(sigma: float) -> float:
    """Independent inverse of sigma(t) = sqrt(exp(19.9 t^2 / 2 + 0.1 t) - 1) (numpy roots)."""
    roots = np.roots([0.5 * 19.9, 0.1, -math.log1p(sigma**2)])
    return float(max(r.real for r in roots))


def test_registers_without_torch() -> None:
    code = (
        "import sys, diffsampler as ds, diffsampler.plugins.guided as p\n"
        "reg = ds.discover(entry_points=False, plugins=[('guided', p)])\n"
        "assert not reg.failures, reg.failures\n"
        "assert {'adm', 'adm-imagenet256', 'cm-lsun-bedroom256'} <= {c.name for c in reg.components('model')}\n"
        "assert 'torch' not in sys.modules, 'torch imported at registration'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_named_models_say_where_weights_come_from(registry: ds.Registry, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path))
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"256x256_diffusion\.pt.*DIFFSAMPLER_ADM_IMAGENET256"):
        ds.get_model("adm-imagenet256")
    with pytest.raises(ModelLoadError, match=r"openaipublic\.blob\.core\.windows\.net/consistency/edm_bedroom256_ema\.pt"):
        ds.get_model("cm-lsun-bedroom256", download=False)


def test_published_architecture_key_names() -> None:
    """A few of OpenAI's 256x256_diffusion.pt / classifier keys, with their shapes."""
    from diffsampler.plugins.guided.catalog import NAMED

    with torch.device("meta"):
        unet = ADMUNet(**NAMED["adm-imagenet256"].model.network)
        cls = ADMClassifier(**NAMED["adm-imagenet256"].classifier.network)
    sd, csd = unet.state_dict(), cls.state_dict()
    assert tuple(sd["label_emb.weight"].shape) == (1000, 1024)
    assert tuple(sd["input_blocks.0.0.weight"].shape) == (256, 3, 3, 3)
    assert tuple(sd["middle_block.1.qkv.weight"].shape) == (3072, 1024, 1)
    assert tuple(sd["out.2.weight"].shape) == (6, 256, 3, 3)
    assert tuple(csd["out.2.positional_embedding"].shape) == (512, 65)
    # Dhariwal & Nichol 2021, Table 14/Appendix: the ImageNet 256 conditional model has 554M parameters
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 554


def test_loads_strictly_and_refuses_code(tiny: dict, registry: ds.Registry, tmp_path: Path) -> None:
    model = ds.get_model(tiny["path"])  # found through loads_file
    assert model.shape == (3, 16, 16) and model.label_dim == CLASSES
    state = tiny["unet"].state_dict()
    state.pop("out.2.bias")
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    broken.with_suffix(".json").write_text(tiny["path"].with_suffix(".json").read_text())
    with pytest.raises(ModelLoadError, match="does not fit ADMUNet"):
        ds.get_model("adm", path=broken)
    evil = tmp_path / "evil.pt"
    torch.save({"x": ds.SigmaList([2.0, 1.0])}, evil)  # any pickled object that is not plain data
    evil.with_suffix(".json").write_text(tiny["path"].with_suffix(".json").read_text())
    with pytest.raises(ModelLoadError, match="weights-only"):
        ds.get_model("adm", path=evil)


def test_vp_eps_to_x0_and_time_maps(tiny: dict, registry: ds.Registry) -> None:
    model = ds.get_model("adm", path=tiny["path"], clip=False, guidance_rate=0.0)
    assert model.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9e-6 + 1e-4)), rel=1e-6)
    assert model.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-6)
    torch.manual_seed(1)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.tensor([0, 3])
    for sigma in (0.05, 1.3, 40.0):
        x = x0 + sigma * torch.randn_like(x0)
        t = 999 * vp_t(sigma)
        eps = tiny["unet"](x / math.sqrt(1 + sigma**2), torch.full((2,), t), labels)[:, :3]
        expected = x - sigma * eps
        got = model(x, torch.full((2,), sigma), labels)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, sigma))
        assert float(model.sigma_to_t(torch.tensor(sigma, dtype=torch.float64))) == pytest.approx(t, rel=1e-9)
    ts = torch.linspace(1.0, 999.0, 7, dtype=torch.float64)
    torch.testing.assert_close(model.sigma_to_t(model.t_to_sigma(ts)), ts)
    clipped = ds.get_model("adm", path=tiny["path"], guidance_rate=0.0)
    out = clipped(x0 * 5, torch.full((2,), 3.0), labels)
    assert out.abs().max() <= 1.0


def test_classifier_guidance_term(tiny: dict, registry: ds.Registry) -> None:
    """D_guided - D_unguided = sigma * sqrt(1 - alpha_bar) * s * grad log p(y | x_t), the gradient
    checked against central differences of an independent float64 copy of the classifier."""
    rate, sigma = 2.5, 0.8
    kw = dict(path=tiny["path"], classifier_path=tiny["cpath"], clip=False)
    guided = ds.get_model("adm", guidance_rate=rate, **kw)
    plain = ds.get_model("adm", guidance_rate=0.0, **kw)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 16, 16) * 0.7
    y = torch.tensor([1, 2])
    s = torch.full((2,), sigma)
    diff = (guided(x, s, y) - plain(x, s, y)).double()
    alpha_bar = 1 / (1 + sigma**2)
    grad = diff / (sigma * math.sqrt(1 - alpha_bar) * rate)
    cls64 = copy.deepcopy(tiny["classifier"]).double()
    x_t = (x / math.sqrt(1 + sigma**2)).double()
    t = torch.full((2,), 999 * vp_t(sigma), dtype=torch.float64)
    v = torch.randn_like(x_t)
    h = 1e-4

    def logp(z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(cls64(z, t), dim=-1)[torch.arange(2), y]

    with torch.no_grad():
        fd = (logp(x_t + h * v) - logp(x_t - h * v)) / (2 * h)
    assert float(grad.abs().max()) > 0
    torch.testing.assert_close((grad * v).sum(dim=(1, 2, 3)), fd, rtol=2e-3, atol=2e-4)


def test_cm_edm_preconditioning(tmp_path: Path, registry: ds.Registry) -> None:
    torch.manual_seed(3)
    unet = ADMUNet(**CM).eval()
    path = _save(unet, tmp_path / "cm.pt", "diffsampler.adm", CM, "edm")
    model = ds.get_model("adm", path=path)
    assert (model.sigma_min, model.sigma_max, model.label_dim) == (0.002, 80.0, 0)
    assert not isinstance(model, ds.TimeMapped)  # its time 250 log(sigma) < 0: no discrete schedule
    x = torch.randn(2, 3, 16, 16) * 5
    sigma = torch.tensor([0.3, 5.0])
    sb = sigma.reshape(-1, 1, 1, 1)
    f = unet(x / torch.sqrt(sb**2 + 0.25), 1000 * torch.log(sigma) / 4)
    expected = 0.25 / (sb**2 + 0.25) * x + sb * 0.5 / torch.sqrt(sb**2 + 0.25) * f
    torch.testing.assert_close(model(x, sigma), expected, rtol=1e-4, atol=1e-4)


def test_sample_cli_with_labels(tiny: dict, registry: ds.Registry, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    out = tmp_path / "run"
    args = ["sample", "--model", "adm", "--model-opt", f"path={tiny['path']}",
            "--model-opt", f"classifier_path={tiny['cpath']}", "--model-opt", "guidance_rate=1.5",
            "--labels", "random", "--seeds", "0-2", "--batch", "2", "--solver", "dpmpp",
            "--nfe", "4", "--device", "cpu", "--out", str(out)]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    data = np.load(out / "samples.npz")
    images = data["samples"]
    assert images.shape == (3, 3, 16, 16) and np.isfinite(images).all() and np.abs(images).max() < 1.1  # D is clamped; x keeps sigma_min noise
    assert set(data["labels"].tolist()) <= set(range(CLASSES))
    res = CliRunner().invoke(build_app(), ["sample", "--model", "adm", "--model-opt", f"path={tiny['path']}",
                                           "--seeds", "0", "--nfe", "2", "--out", str(tmp_path / "r2")])
    assert res.exit_code != 0 and "class-conditional" in str(res.exception)


def test_discrete_schedule_in_adm_time(tiny: dict, registry: ds.Registry) -> None:
    """The discrete schedule spaces steps uniformly in ADM's time (M - 1) t(sigma)."""
    model = ds.get_model("adm", path=tiny["path"])
    assert isinstance(model, ds.TimeMapped)
    sigmas = ds.get_schedule("discrete").sigmas(6, model.sigma_min, model.sigma_max, denoiser=model)
    t = np.array([999 * vp_t(float(s)) for s in sigmas])
    np.testing.assert_allclose(np.diff(t), np.full(5, (t[-1] - t[0]) / 5), rtol=1e-6)
    assert float(sigmas[0]) == pytest.approx(model.sigma_max) and float(sigmas[-1]) == pytest.approx(model.sigma_min)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True, text=True)


def test_a_state_dict_that_does_not_fit_is_summarised(tiny: dict, tmp_path: Path, registry: ds.Registry) -> None:
    """A CM network's file with an ADM config: a few keys of each kind and their counts, not all."""
    torch.manual_seed(3)
    cm = _save(ADMUNet(**CM).eval(), tmp_path / "cm.pt", "diffsampler.adm", CM, "edm")
    with pytest.raises(ModelLoadError) as info:
        ds.get_model("adm", path=cm, config=tiny["path"].with_suffix(".json"))
    message = str(info.value)
    assert message.startswith(f"{cm} does not fit ADMUNet: missing keys: label_emb.weight; shape mismatches: ")
    assert message.endswith(f"in all); check the network settings in {tiny['path'].with_suffix('.json')}")
    assert len(message) < 1500


def test_guidance_without_a_classifier_is_refused(tiny: dict, registry: ds.Registry, tmp_path: Path) -> None:
    with pytest.raises(ds.OptionError, match=r"^adm: guidance_rate=4 needs a classifier: add classifier_path="):
        ds.get_model("adm", path=tiny["path"], guidance_rate=4)
    res = _cli("sample", "--model", "adm", "--model-opt", f"path={tiny['path']}", "--model-opt", "guidance_rate=2.5",
               "--labels", "1", "--seeds", "0", "--nfe", "2", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: adm: guidance_rate=2.5 needs a classifier: add classifier_path=... (classifier guidance), "
        "or drop guidance_rate"
    ]
    plain = ds.get_model("adm", path=tiny["path"])  # no classifier, no rate: unguided, and it says so
    assert plain.info["guidance"] is None and plain.guidance_rate == 0
    guided = ds.get_model("adm", path=tiny["path"], classifier_path=tiny["cpath"])  # the seed's rate 4
    assert guided.info["guidance"] == {"type": "classifier", "rate": 4.0}


def test_cm_lists_no_guidance_or_label_options(registry: ds.Registry) -> None:
    options = {f.name for f in attrs.fields(registry.get("model", "cm-lsun-bedroom256").options)}
    assert options.isdisjoint({"guidance_rate", "class_label", "classifier_path", "clip"})
    assert {"guidance_rate", "class_label", "classifier_path"} <= {
        f.name for f in attrs.fields(registry.get("model", "adm-imagenet256").options)}
    with pytest.raises(ds.OptionError, match="'cm-lsun-bedroom256' has no option 'guidance_rate'"):
        ds.get_model("cm-lsun-bedroom256", guidance_rate=9)


def test_missing_labels_are_refused_before_sampling(tiny: dict, registry: ds.Registry) -> None:
    """``check_labels`` (called while planning) names the --labels choices of a class-conditional model."""
    model = ds.get_model("adm", path=tiny["path"])
    with pytest.raises(ds.OptionError, match=r"^model 'adm' is class-conditional: choose classes with "
                                             r"--labels random\|seed\|K or the model option class_label$"):
        model.check_labels(None)
    model.check_labels("random")
    ds.get_model("adm", path=tiny["path"], class_label=2).check_labels(None)


@pytest.mark.parametrize("order", ["legacy", "qkv_first"])
def test_attention_equals_guided_diffusions_formula(order: str, monkeypatch) -> None:
    """SDPA-based attention against guided-diffusion's QKVAttention(Legacy) written out: split
    heads as the layout says, softmax(q.k / sqrt(ch)) over positions in float64, weighted v; the
    inputs SDPA sees have a contiguous last dimension (what its fused kernels need)."""
    import math

    import diffsampler.plugins.guided.unet as unet

    b, heads, ch, length = 2, 3, 8, 10
    qkv = torch.randn(b, 3 * heads * ch, length, generator=torch.Generator().manual_seed(0))
    strides: list[int] = []
    real = unet.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        strides.extend([q.stride(-1), k.stride(-1), v.stride(-1)])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(unet.F, "scaled_dot_product_attention", spy)
    got = unet._attend(qkv, heads, order)
    x = qkv.double()
    if order == "legacy":
        q, k, v = x.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(b * heads, ch, length) for z in x.chunk(3, dim=1))
    w = torch.softmax(torch.einsum("nct,ncs->nts", q, k) / math.sqrt(ch), dim=-1)
    expected = torch.einsum("nts,ncs->nct", w, v).reshape(b, heads * ch, length)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert strides == [1, 1, 1]


def test_channels_last_and_compiled_give_the_plain_networks_output(tiny: dict, registry: ds.Registry,
                                                                   monkeypatch) -> None:
    """The inference options of every neural model (docs/performance.md): channels-last memory
    and ``compiled()`` (static shapes; the compiler is swapped for Dynamo's eager backend here, which
    checks the tracing and the wiring in seconds, not Inductor's kernels)."""
    torch.manual_seed(2)
    x, sigma, labels = torch.randn(2, 3, 16, 16) * 3, torch.full((2,), 3.0), torch.tensor([1, 2])
    plain = ds.get_model("adm", path=tiny["path"], guidance_rate=0.0)
    reference = plain(x, sigma, labels)
    fast = ds.get_model("adm", path=tiny["path"], guidance_rate=0.0, channels_last=True)
    conv = next(p for p in fast.unet.parameters() if p.dim() == 4 and p.shape[-1] == 3)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(fast(x, sigma, labels), reference, rtol=1e-5, atol=1e-5)
    calls = eager_compiler(monkeypatch)
    assert isinstance(fast, ds.Compilable)
    twin = fast.compiled()
    torch.testing.assert_close(twin(x, sigma, labels), reference, rtol=1e-5, atol=1e-5)
    assert calls == [{"mode": "default", "dynamic": False}]
    assert fast.unet is not twin.unet  # the original stays eager


def test_every_cpu_inference_variant_is_finite_and_close_to_fp32(tiny: dict, registry: ds.Registry) -> None:
    """`bench` variants on ADM (iPNDM, NFE 5, final samples against fp32 eager), with the
    tolerances stated for the EDM networks in tests/test_bench.py."""
    check_cpu_variants("adm", {"path": str(tiny["path"]), "class_label": 1}, batch=4)


@pytest.mark.parametrize("dims, order", [(1, "legacy"), (2, "qkv_first")])
def test_attention_block_equals_guided_diffusions(dims: int, order: str) -> None:
    """The block as guided-diffusion writes it (GroupNorm, 1x1 Conv1d over the flattened pixels
    or Conv2d, attention, residual), against ours, which keeps the image 4-D throughout."""
    from diffsampler.plugins.guided.unet import AttentionBlock, _attend

    torch.manual_seed(5)
    block = AttentionBlock(32, heads=2, head_channels=-1, dims=dims, order=order).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        x = torch.randn(2, 32, 4, 4)
        flat = x.reshape(2, 32, -1)
        if dims == 1:
            expected = (flat + block.proj_out(_attend(block.qkv(block.norm(flat)), 2, order))).reshape(x.shape)
        else:
            h = _attend(block.qkv(block.norm(x)).reshape(2, 96, -1), 2, order).reshape(x.shape)
            expected = x + block.proj_out(h)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_a_compiled_residual_and_attention_block_stays_finite_in_bf16_on_the_cpu() -> None:
    """Inductor's CPU kernels (PyTorch 2.13) turned a ResBlock + legacy AttentionBlock to NaN in
    bf16 when the attention flattened the pixels to 3-D (a channels-last 4-D tensor reshaped);
    the block now stays 4-D. Compiles one small block (some seconds)."""
    from diffsampler.plugins.guided.unet import AttentionBlock, EmbedSequential, ResBlock

    torch.manual_seed(6)
    seq = EmbedSequential(ResBlock(32, 16, 64, scale_shift=True),
                          AttentionBlock(64, heads=2, head_channels=-1, dims=1, order="legacy")).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = seq(x, emb).float()
        got = torch.compile(seq, dynamic=False)(x, emb).float()
    assert torch.isfinite(got).all()
    assert float((got - expected).norm() / expected.norm()) < 0.05
