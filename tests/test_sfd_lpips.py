"""LPIPS (VGG16) for SFD's second stage: piq's own code as the reference, properties, file checks.

The weights are random (no network here) but saved in the real formats: torchvision's VGG16 state
dict, piq's list of linear weights and richzhang/PerceptualSimilarity's state dict.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import diffsampler as ds
from diffsampler.plugins.sfd.lpips import CHANNELS, LPIPS, load_lpips


def _vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-style VGG16 state dict with random (He-scaled) weights, classifier included."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    index, c_in = 0, 3
    for item in (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512):
        if item == "P":
            index += 1
            continue
        c_out = int(item)
        std = (2.0 / (9 * c_in)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * std
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=g) * 0.05
        c_in, index = c_out, index + 2
    state["classifier.0.weight"] = torch.zeros(4, 8)  # ignored (the real one is [4096, 25088])
    state["classifier.0.bias"] = torch.zeros(4)
    return state


def _lin(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, c, 1, 1, generator=g) for c in CHANNELS]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lpips")
    paths = {
        "vgg": folder / "vgg16.pth",
        "piq": folder / "lpips_weights.pt",
        "rz": folder / "vgg.pth",
    }
    torch.save(_vgg16_state(), paths["vgg"])
    torch.save(_lin(), paths["piq"])
    torch.save({f"lin{k}.model.1.weight": w for k, w in enumerate(_lin())}, paths["rz"])
    return paths


@pytest.fixture(scope="module")
def small(files) -> LPIPS:
    """Loaded from the files, on 16x16 images (no resize) to keep the property tests fast."""
    return load_lpips(vgg=files["vgg"], lin=files["piq"], resize=None, allow_download=False)


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def _import_piq() -> Any | None:
    """``piq.perceptual`` and ``torchvision.models``, importable beside the CPU torch as in _fidref."""
    folder = Path(
        os.environ.get("DIFFSAMPLER_FIDREF_DIR", "~/.cache/diffsampler-fidref")
    ).expanduser()
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.append(str(folder))
    if "torchvision" not in sys.modules:
        sys.modules.setdefault(
            "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
        )
    try:
        import piq.perceptual
        import torchvision.models
    except Exception:
        return None
    return types.SimpleNamespace(perceptual=piq.perceptual, models=torchvision.models)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_equals_piq_content_loss(files, pooling):
    ref = _import_piq()
    if ref is None:
        pytest.skip(
            "piq/torchvision not importable: pip install --no-deps --target ~/.cache/diffsampler-fidref torchvision==0.28.0 piq==0.8.0"
        )
    features = ref.models.vgg16().features
    features.load_state_dict(
        {k[len("features.") :]: v for k, v in _vgg16_state().items() if k.startswith("features.")}
    )
    piq_lpips = ref.perceptual.ContentLoss(
        feature_extractor=features,
        layers=["3", "8", "15", "22", "29"],
        weights=_lin(),
        replace_pooling=pooling == "avg",
        distance="mse",
        reduction="none",
        normalize_features=True,
    )
    ours = load_lpips(vgg=files["vgg"], lin=files["piq"], pooling=pooling, allow_download=False)
    x, y = _images(2, 32, seed=2), _images(2, 32, seed=3)
    got = ours(x, y)
    resized = [torch.nn.functional.interpolate(t, size=224, mode="bilinear") for t in (x, y)]
    with torch.no_grad():
        want = piq_lpips((resized[0] + 1) / 2, (resized[1] + 1) / 2)
    assert got.shape == want.shape == (2,) and bool((want > 0).all())
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=0)


def test_distance_properties(small):
    x, y = _images(3, 16, seed=4), _images(3, 16, seed=5)
    d_xy, d_yx, d_xx = small(x, y), small(y, x), small(x, x)
    assert d_xy.dtype == torch.float32 and d_xy.shape == (3,)
    assert bool((d_xy > 1e-3).all())
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-6, atol=0)
    assert float(d_xx.abs().max()) < 1e-9
    # float32 whatever the input dtype; a grey image is its 3-channel repeat
    torch.testing.assert_close(small(x.double(), y.double()), d_xy, rtol=1e-6, atol=0)
    g1, g2 = x[:, :1], y[:, :1]
    torch.testing.assert_close(small(g1, g2), small(g1.repeat(1, 3, 1, 1), g2.repeat(1, 3, 1, 1)))


def test_gradient_reaches_inputs_not_parameters(small):
    x = _images(2, 16, seed=6).requires_grad_(True)
    y = _images(2, 16, seed=7).requires_grad_(True)
    small(x, y).sum().backward()
    assert y.grad is not None and float(y.grad.abs().max()) > 0
    assert (
        x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().max()) > 0
    )
    assert all(not p.requires_grad and p.grad is None for p in small.parameters())
    assert len(list(small.parameters())) == 26  # 13 convolutions, weight and bias


def test_resize_and_pooling_options(files):
    x, y = _images(1, 8, seed=8), _images(1, 8, seed=9)
    resized = load_lpips(
        vgg=files["vgg"], lin=files["piq"], resize=16, pooling="max", allow_download=False
    )
    plain = load_lpips(
        vgg=files["vgg"], lin=files["piq"], resize=None, pooling="max", allow_download=False
    )
    up = [
        torch.nn.functional.interpolate(t, size=16, mode="bilinear", align_corners=False)
        for t in (x, y)
    ]
    torch.testing.assert_close(resized(x, y), plain(*up))
    with pytest.raises(ds.OptionError, match="pooling"):
        LPIPS(pooling="min")  # type: ignore[arg-type]
    with pytest.raises(ds.OptionError, match="resize"):
        LPIPS(resize=8)
    with pytest.raises(ValueError, match="at least 16x16"):
        plain(x, y)


def test_both_linear_formats_agree(files, small):
    rz = load_lpips(vgg=files["vgg"], lin=files["rz"], resize=None, allow_download=False)
    x, y = _images(2, 16, seed=10), _images(2, 16, seed=11)
    assert torch.equal(rz(x, y), small(x, y))


def test_lookup_through_env_and_cache(files, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFSAMPLER_LPIPS_VGG16", str(files["vgg"]))
    monkeypatch.delenv("DIFFSAMPLER_LPIPS_LIN", raising=False)
    import diffsampler.plugins.sfd.lpips as module

    monkeypatch.setattr(module, "installed_lin_weights", lambda: None)  # no `lpips` package either
    with pytest.raises(ds.ModelLoadError, match=r"lpips_weights\.pt is not available locally"):
        load_lpips(allow_download=False)
    (tmp_path / "cache" / "lpips").mkdir(parents=True)
    (tmp_path / "cache" / "lpips" / "lpips_weights.pt").write_bytes(files["piq"].read_bytes())
    model = load_lpips(allow_download=False, resize=None)
    torch.testing.assert_close(model.lin0, _lin()[0].reshape(-1))


def _bad(tmp_path: Path, obj: Any, name: str = "bad.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_bad_files_raise_one_clear_error(files, tmp_path):
    vgg = _vgg16_state()
    no_key = {k: v for k, v in vgg.items() if k != "features.14.bias"}
    wrong = dict(vgg, **{"features.7.weight": torch.zeros(128, 64, 1, 1)})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    cases_vgg = [
        (_bad(tmp_path, no_key, "a.pt"), r"no 'features\.14\.bias'"),
        (
            _bad(tmp_path, wrong, "b.pt"),
            r"features\.7\.weight has shape \[128, 64, 1, 1\], expected \[128, 128, 3, 3\]",
        ),
        (garbage, r"garbage\.pth is not a tensor file"),
        (
            _bad(tmp_path, {"code": types.SimpleNamespace(a=1)}, "p.pt"),
            r"p\.pt is not a tensor file",
        ),
        (
            _bad(tmp_path, [torch.zeros(1)], "c.pt"),
            "holds a list, expected torchvision's VGG16 state dict",
        ),
        (tmp_path / "missing.pth", r"vgg='.*missing\.pth' does not exist"),
    ]
    for path, message in cases_vgg:
        with pytest.raises(ds.ModelLoadError, match=message):
            load_lpips(vgg=path, lin=files["piq"], allow_download=False)
    lin = _lin()
    cases_lin = [
        (_bad(tmp_path, lin[:3], "d.pt"), "list of 3 entries, expected piq's list of 5 tensors"),
        (_bad(tmp_path, {"lin0.model.1.weight": lin[0]}, "e.pt"), r"no 'lin1\.model\.1\.weight'"),
        (
            _bad(tmp_path, [*lin[:4], torch.rand(1, 256, 1, 1)], "f.pt"),
            r"entry 4 has shape \[1, 256, 1, 1\], expected 512",
        ),
        (_bad(tmp_path, [*lin[:4], -lin[4]], "g.pt"), "entry 4 has negative weights"),
        (_bad(tmp_path, [*lin[:4], "w"], "h.pt"), "entry 4 is not a floating-point tensor"),
        (garbage, r"garbage\.pth is not a tensor file"),
    ]
    for path, message in cases_lin:
        with pytest.raises(ds.ModelLoadError, match=message):
            load_lpips(vgg=files["vgg"], lin=path, allow_download=False)


def _import_lpips() -> Any | None:
    """The paper's own package (``lpips``, richzhang/PerceptualSimilarity), importable beside the
    CPU torch with the torchvision trick above; it ships the real linear weights."""
    if _import_piq() is None:  # sets up torchvision
        return None
    try:
        import lpips
    except Exception:
        return None
    return lpips


def test_equals_the_papers_lpips_package_with_its_real_linear_weights(tmp_path):
    """The reference implementation with its shipped v0.1 VGG weights (the real file, read by our
    loader) and a random trunk (no ImageNet weights here), copied into ours: same distances."""
    from diffsampler.plugins.sfd.lpips import installed_lin_weights, read_lin_weights

    lpips = _import_lpips()
    if lpips is None:
        pytest.skip("lpips not importable: pip install --no-deps --target ~/.cache/diffsampler-fidref lpips==0.1.4")
    real = installed_lin_weights()
    assert real is not None and real.name == "vgg.pth"
    lin = read_lin_weights(real)
    assert [w.numel() for w in lin] == list(CHANNELS) and all(bool((w >= 0).all()) for w in lin)
    torch.manual_seed(0)
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    trunk = {}
    for part in (reference.net.slice1, reference.net.slice2, reference.net.slice3, reference.net.slice4,
                 reference.net.slice5):
        for name, module in part.named_children():
            if isinstance(module, torch.nn.Conv2d):
                trunk[f"features.{name}.weight"] = module.weight.detach().clone()
                trunk[f"features.{name}.bias"] = module.bias.detach().clone()
    torch.save(trunk, tmp_path / "vgg16.pth")
    ours = load_lpips(vgg=tmp_path / "vgg16.pth", pooling="max", resize=None, allow_download=False)
    for got, want in zip(ours.lin_weights(), lin, strict=True):
        torch.testing.assert_close(got, want)
    x, y = _images(2, 32, seed=4), _images(2, 32, seed=5)
    with torch.no_grad():
        want = reference(x, y).reshape(-1)
        got = ours(x, y)
    assert bool((want > 0).all())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
