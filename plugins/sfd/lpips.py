"""LPIPS with a VGG16 trunk: the perceptual term of SFD's second (1-NFE) stage.

Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"
(CVPR 2018, arXiv:1801.03924), Eq. 1:

    d(x, y) = sum_l 1 / (H_l W_l) sum_{h,w} sum_c w_{l,c} (f^l_{hwc}(x) - f^l_{hwc}(y))^2

where f^l are the trunk's activations at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of an
ImageNet VGG16 (torchvision ``vgg16().features`` indices 3, 8, 15, 22, 29), each unit-normalised
along the channels (``f / (||f||_2 + 1e-10)``), and w_l >= 0 the learned linear weights (applied
to the squared differences, as the reference code's 1x1 convolution does; the paper writes w_l
inside the norm). Input images are in [-1, 1] and are scaled by LPIPS's shift [-.030, -.088, -.188]
and scale [.458, .448, .450], which is ImageNet's mean and std applied to ``(x + 1) / 2``.

SFD (Zhou et al. 2024, arXiv:2409.19681; seed ``sfd-main/training/loss.py``) adds this distance on
the last step of its second stage with piq's ``LPIPS(replace_pooling=True, reduction="none")`` on
images resized bilinearly to 224x224: the defaults here (``pooling="avg"``: every 2x2 max pooling
replaced by an average pooling; ``resize=224``, ``align_corners=False``). ``pooling="max"`` is the
paper's network.

Deviation from the seed: the seed feeds the network's [-1, 1] images straight into piq, which
expects [0, 1] (it subtracts ImageNet's mean from [-1, 1] values). Here the images keep LPIPS's own
[-1, 1] convention, i.e. piq sees ``(x + 1) / 2``: the distance LPIPS was trained for.

The distance is computed in float32 whatever the input dtype (autocast off inside ``forward``);
the trunk and the linear weights are frozen (no gradients), gradients flow to both inputs.

Weights (:func:`load_lpips`), each found by :func:`diffsampler.weights.locate` (explicit path,
environment variable, cache ``$DIFFSAMPLER_CACHE/lpips``, else a download):

* the trunk: torchvision's ``vgg16-397923af.pth`` state dict (``features.N.weight/bias``; the
  ``classifier.*`` keys are ignored), ``DIFFSAMPLER_LPIPS_VGG16``;
* the linear weights: piq's ``lpips_weights.pt`` (a list of 5 tensors), or richzhang/
  PerceptualSimilarity's ``lpips/weights/v0.1/vgg.pth`` (a state dict ``linK.model.1.weight``,
  each [1, C, 1, 1]), ``DIFFSAMPLER_LPIPS_LIN``. When no copy is found locally, the
  ``vgg.pth`` inside an installed ``lpips`` package (``pip install lpips``, which ships it) is
  used before anything is downloaded.

Both are read with ``torch.load(..., weights_only=True)``: a file cannot run pickled code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffsampler.errors import ModelLoadError, OptionError
from diffsampler.weights import WeightsFile, locate

__all__ = [
    "LAYERS",
    "LIN_WEIGHTS",
    "LPIPS",
    "RICHZHANG_LIN_URL",
    "VGG16_WEIGHTS",
    "installed_lin_weights",
    "load_lpips",
    "read_lin_weights",
    "read_vgg16_features",
]

# torchvision's VGG16 ``features`` up to relu5_3: 3x3 convolutions (output channels, each followed
# by a ReLU) and "P" a 2x2 pooling of stride 2. Indices then match torchvision's Sequential.
_VGG16 = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512)
LAYERS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)
MIN_SIZE = 16  # four poolings before relu5_3
EPS = 1e-10  # feature normalisation, as LPIPS and piq
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG16_WEIGHTS = WeightsFile(
    what="LPIPS VGG16 trunk",
    file="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    env_var="DIFFSAMPLER_LPIPS_VGG16",
    subdir="lpips",
    option="--lpips-vgg",
    sha256_prefix="397923af",
)
LIN_WEIGHTS = WeightsFile(
    what="LPIPS linear weights",
    file="lpips_weights.pt",
    url="https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt",
    env_var="DIFFSAMPLER_LPIPS_LIN",
    subdir="lpips",
    option="--lpips-lin",
)
# The same weights as published with the paper's code (state dict format); usable as ``lin=``.
RICHZHANG_LIN_URL = (
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
)

Pooling = Literal["avg", "max"]


def installed_lin_weights() -> Path | None:
    """``weights/v0.1/vgg.pth`` of an installed ``lpips`` package (found without importing it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / "weights" / "v0.1" / "vgg.pth"
        if candidate.is_file():
            return candidate
    return None


def _conv_indices() -> list[tuple[int, int, int]]:
    """(index in ``features``, input channels, output channels) of each convolution."""
    out, index, c_in = [], 0, 3
    for item in _VGG16:
        if item == "P":
            index += 1
            continue
        out.append((index, c_in, int(item)))
        c_in = int(item)
        index += 2
    return out


class LPIPS(nn.Module):
    """LPIPS (VGG16) between two image batches in [-1, 1]: ``forward(x, y) -> [batch]``.

    Built with default-initialised, untrained weights; :func:`load_lpips` loads the real ones.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, *, pooling: Pooling = "avg", resize: int | None = 224) -> None:
        super().__init__()
        if pooling not in ("avg", "max"):
            raise OptionError(f"LPIPS pooling must be 'avg' or 'max', got {pooling!r}")
        if resize is not None and (
            isinstance(resize, bool) or not isinstance(resize, int) or resize < MIN_SIZE
        ):
            raise OptionError(
                f"LPIPS resize must be None or an integer >= {MIN_SIZE}, got {resize!r}"
            )
        self.pooling = pooling
        self.resize = resize
        layers: list[nn.Module] = []
        c_in = 3
        for item in _VGG16:
            if item == "P":
                layers.append(nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU()]
                c_in = int(item)
        self.features = nn.Sequential(*layers)
        for k, c in enumerate(CHANNELS):
            self.register_buffer(f"lin{k}", torch.zeros(c))
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # LPIPS's scaling layer: shift [-.030, -.088, -.188], scale [.458, .448, .450]
        self.register_buffer("shift", (2 * mean - 1).view(1, 3, 1, 1))
        self.register_buffer("scale", (2 * std).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def lin_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"lin{k}") for k in range(len(CHANNELS))]

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, resize={self.resize!r}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance (float32, shape [batch]) between ``x`` and ``y`` in [-1, 1]."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                "LPIPS expects two image batches [N, 1 or 3, H, W] of one shape, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if self.resize is None and min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(
                f"LPIPS without resize needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            fx, fy = self.features_of(x), self.features_of(y)
            total = fx[0].new_zeros(x.shape[0])
            for a, b, w in zip(fx, fy, self.lin_weights(), strict=True):
                weighted = ((a - b).square() * w.view(1, -1, 1, 1)).sum(dim=1)
                total = total + weighted.mean(dim=(1, 2))
        return total

    def features_of(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised activations (float32) of images in [-1, 1].

        ``x`` and ``y`` go through separately, so that autograd keeps no activations of an input
        that needs no gradient (the teacher's images in SFD).
        """
        h = images.float()
        if h.shape[1] == 1:
            h = h.expand(-1, 3, -1, -1)
        if self.resize is not None:
            size = (self.resize, self.resize)
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        h = (h - self.shift) / self.scale
        out = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in LAYERS:
                out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + EPS))
        return out


def _load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{what}: {path} is not a tensor file torch.load(weights_only=True) can read ({reason})"
        ) from None


def _tensor(obj: Any, path: Path, what: str, name: str) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor) or not torch.is_floating_point(obj):
        raise ModelLoadError(
            f"{what}: {path}: {name} is not a floating-point tensor ({type(obj).__name__})"
        )
    if not bool(torch.isfinite(obj).all()):
        raise ModelLoadError(f"{what}: {path}: {name} has non-finite values")
    return obj.detach().float()


def read_vgg16_features(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict of :attr:`LPIPS.features` from torchvision's VGG16 file (checked)."""
    path, what = Path(path), VGG16_WEIGHTS.what
    obj = _load(path, what)
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{what}: {path} holds a {type(obj).__name__}, expected torchvision's VGG16 state dict (features.N.weight/bias)"
        )
    # torchvision's whole-model keys ("features.0.weight"), or a saved ``.features`` ("0.weight").
    prefix = "features." if any(str(k).startswith("features.") for k in obj) else ""
    state: dict[str, torch.Tensor] = {}
    for index, c_in, c_out in _conv_indices():
        for kind, shape in (("weight", (c_out, c_in, 3, 3)), ("bias", (c_out,))):
            key = f"{prefix}{index}.{kind}"
            if key not in obj:
                raise ModelLoadError(
                    f"{what}: {path} has no {key!r}: expected torchvision's VGG16 state dict"
                )
            value = _tensor(obj[key], path, what, key)
            if tuple(value.shape) != shape:
                raise ModelLoadError(
                    f"{what}: {path}: {key} has shape {list(value.shape)}, expected {list(shape)}"
                )
            state[f"{index}.{kind}"] = value
    return state


def _richzhang_key(obj: Mapping[str, Any], k: int) -> str | None:
    for key in (f"lin{k}.model.1.weight", f"lin{k}.model.0.weight"):  # with / without dropout
        if key in obj:
            return key
    return None


def read_lin_weights(path: str | os.PathLike[str]) -> list[torch.Tensor]:
    """The five LPIPS linear weights ([C] each, >= 0) from piq's list or richzhang's state dict."""
    path, what = Path(path), LIN_WEIGHTS.what
    obj = _load(path, what)
    expected = (
        f"expected piq's list of {len(CHANNELS)} tensors or richzhang's state dict "
        f"lin0.model.1.weight ... lin{len(CHANNELS) - 1}.model.1.weight"
    )
    items: list[tuple[str, Any]]
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        if len(obj) != len(CHANNELS):
            raise ModelLoadError(f"{what}: {path} holds a list of {len(obj)} entries, {expected}")
        items = [(f"entry {k}", v) for k, v in enumerate(obj)]
    elif isinstance(obj, Mapping):
        items = []
        for k in range(len(CHANNELS)):
            key = _richzhang_key(obj, k)
            if key is None:
                raise ModelLoadError(f"{what}: {path} has no 'lin{k}.model.1.weight', {expected}")
            items.append((key, obj[key]))
    else:
        raise ModelLoadError(f"{what}: {path} holds a {type(obj).__name__}, {expected}")
    weights = []
    for (name, value), c in zip(items, CHANNELS, strict=True):
        w = _tensor(value, path, what, name)
        if w.numel() != c or sorted(w.shape)[:-1] != [1] * (w.ndim - 1):
            raise ModelLoadError(
                f"{what}: {path}: {name} has shape {list(w.shape)}, expected {c} weights ([1, {c}, 1, 1])"
            )
        if bool((w < 0).any()):
            raise ModelLoadError(
                f"{what}: {path}: {name} has negative weights (LPIPS weights are >= 0)"
            )
        weights.append(w.reshape(c))
    return weights


def load_lpips(
    *,
    vgg: str | os.PathLike[str] | None = None,
    lin: str | os.PathLike[str] | None = None,
    pooling: Pooling = "avg",
    resize: int | None = 224,
    allow_download: bool = True,
    device: str | torch.device = "cpu",
) -> LPIPS:
    """LPIPS with the published VGG16 and linear weights; a :class:`ModelLoadError` if unusable."""
    model = LPIPS(pooling=pooling, resize=resize)  # options checked before any download
    vgg_path = locate(VGG16_WEIGHTS, path=vgg, allow_download=allow_download)
    if lin is None and LIN_WEIGHTS.local_copy() is None:
        lin = installed_lin_weights()
    lin_path = locate(LIN_WEIGHTS, path=lin, allow_download=allow_download)
    model.features.load_state_dict(read_vgg16_features(vgg_path))
    for buffer, w in zip(model.lin_weights(), read_lin_weights(lin_path), strict=True):
        buffer.copy_(w)
    return model.to(device)
