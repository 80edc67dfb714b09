"""FID's Inception-v3 against pytorch-fid: the same random state dict gives the same features.

Live comparison when pytorch-fid imports here (see tests/_fidref.py); always, a comparison with
pytorch-fid's features recorded by tests/data/make_pytorch_fid_reference.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _fidref import import_pytorch_fid, reference_images

from diffsampler.plugins.metrics.inception import FIDInceptionV3, load_state_dict, randomize_

GOLDEN = Path(__file__).parent / "data" / "pytorch_fid_random_features.npz"


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    """pytorch-fid's input preparation: the network itself is what these tests compare."""
    return randomize_(FIDInceptionV3(resize="pytorch-fid"), 0).eval()


@pytest.fixture(scope="module")
def ours(net) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: net(torch.from_numpy(v)).numpy() for k, v in reference_images().items()}


def test_matches_recorded_pytorch_fid_features(ours):
    golden = np.load(GOLDEN)
    for name, features in ours.items():
        ref = golden[name]
        assert features.shape == ref.shape == (len(features), 2048)
        assert np.abs(ref).mean() > 0.1  # activations did not vanish through the depth
        np.testing.assert_allclose(features, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_matches_live_pytorch_fid(net, ours):
    pfi = import_pytorch_fid()
    if pfi is None:
        pytest.skip("pytorch-fid not importable (pip install --no-deps --target ~/.cache/diffsampler-fidref "
                    "torchvision==0.28.0 pytorch-fid==0.3.0)")
    state = net.state_dict()
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: state
    try:
        ref_net = pfi.InceptionV3([3]).eval()  # loads the state dict strictly: same names and shapes
    finally:
        pfi.load_state_dict_from_url = original
    for name, images in reference_images().items():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        with torch.no_grad():
            ref = ref_net(x)[0].flatten(1).numpy()
        np.testing.assert_allclose(ours[name], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_grey_images_are_rgb_repeated(net):
    grey = reference_images()["grey8"]
    with torch.no_grad():
        a = net(torch.from_numpy(grey))
        b = net(torch.from_numpy(np.repeat(grey, 3, axis=-1)))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_preprocess_is_identity_resize_at_299_then_scales_to_unit_interval():
    images = torch.randint(0, 256, (2, 299, 299, 3), dtype=torch.uint8)
    x = FIDInceptionV3.preprocess(images, "pytorch-fid")
    expected = 2 * (images.permute(0, 3, 1, 2).float() / 255) - 1
    torch.testing.assert_close(x, expected)
    small = FIDInceptionV3.preprocess(torch.full((1, 8, 8, 3), 255, dtype=torch.uint8), "pytorch-fid")
    assert small.shape == (1, 3, 299, 299) and torch.allclose(small, torch.ones(()))


def tf1_resize_bilinear(images: np.ndarray, size: int = 299) -> np.ndarray:
    """TensorFlow 1's ``resize_bilinear`` (align_corners=False, half_pixel_centers=False), written
    from its definition with loops: output ``i`` reads input ``i * in / out``, the upper
    neighbour clamped to the last pixel. ``images`` float ``[N, H, W, C]``."""
    n, h, w, c = images.shape
    out = np.zeros((n, size, size, c))
    for i in range(size):
        y = i * h / size
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * w / size
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = images[:, y0, x0] * (1 - fx) + images[:, y0, x1] * fx
            bottom = images[:, y1, x0] * (1 - fx) + images[:, y1, x1] * fx
            out[:, i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("shape", [(32, 32), (8, 8), (64, 48), (299, 299), (400, 300)])
def test_tf_resize_is_tensorflows_legacy_bilinear_then_128_scaling(shape):
    images = np.random.default_rng(1).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    got = FIDInceptionV3.preprocess(torch.from_numpy(images), "tf").permute(0, 2, 3, 1).numpy()
    want = (tf1_resize_bilinear(images.astype(np.float64)) - 128) / 128
    np.testing.assert_allclose(got, want, atol=1e-4)  # grid_sample places samples in float32
    if shape == (32, 32):  # pytorch-fid's half-pixel sampling is far from it at CIFAR-10's size
        other = FIDInceptionV3.preprocess(torch.from_numpy(images), "pytorch-fid").permute(0, 2, 3, 1).numpy()
        assert np.abs(other - want).mean() > 0.02


def test_the_default_is_tensorflows_resize():
    assert FIDInceptionV3().resize == "tf"
    with pytest.raises(ValueError, match="resize must be one of tf, pytorch-fid"):
        FIDInceptionV3(resize="area")


def test_state_dict_layout_of_the_published_file():
    state = FIDInceptionV3().state_dict()
    convs = [k for k in state if k.endswith("conv.weight")]
    assert len(convs) == 94  # Inception-v3 without the auxiliary head
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048)  # TensorFlow's 1008 classes
    assert not any(k.startswith("AuxLogits") for k in state)


def test_load_state_dict_rejects_foreign_and_accepts_files_without_batch_counters():
    net = FIDInceptionV3()
    state = {k: v for k, v in randomize_(FIDInceptionV3(), 1).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    load_state_dict(net, state)
    assert torch.equal(net.Mixed_6e.branch7x7dbl_5.bn.running_var, state["Mixed_6e.branch7x7dbl_5.bn.running_var"])
    with pytest.raises(ValueError, match="not an FID Inception"):
        load_state_dict(net, {**state, "extra.weight": torch.zeros(1)})
