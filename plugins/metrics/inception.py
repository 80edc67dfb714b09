"""The Inception-v3 network of FID (Heusel et al. 2017), as TensorFlow's ``inception-2015-12-05``.

Szegedy et al. 2016 (arXiv:1512.00567), in the form pytorch-fid ports from TensorFlow: torchvision's
Inception-v3 layout (module names match the ``pt_inception-2015-12-05-6726825d.pth`` state dict),
1008 classes, no auxiliary head, and the four places where TensorFlow's graph differs:

* the average pools of the A, C and first E blocks exclude the zero padding from the mean
  (``count_include_pad=False``);
* the pool branch of the last E block (``Mixed_7c``) is a 3x3 *max* pool, stride 1.

:class:`FIDInceptionV3` maps uint8 images to the 2048-d pool features. The input is prepared as
the network published FIDs come from does (``resize``):

* ``tf`` (default): as TensorFlow's graph and NVIDIA's ``inception-2015-12-05.pkl`` (EDM's and
  the seed's ``fid.py``): TensorFlow 1's bilinear resize to 299x299 — output pixel ``i`` samples
  the input at ``i * W / 299``, no half-pixel offset, the last pixel repeated past the border —
  then ``(x - 128) / 128`` on the 0..255 scale;
* ``pytorch-fid``: ``x / 255``, ``F.interpolate(bilinear, align_corners=False)`` (half-pixel
  centres), then ``2 x - 1``.

The two sample points differ by up to half an input pixel when upsampling 32x32 images (21 % of
the input's spread on CIFAR-10), so FIDs made one way do not compare with the other's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FEATURE_DIM", "RESIZES", "FIDInceptionV3", "load_state_dict", "randomize_"]

FEATURE_DIM = 2048
INPUT_SIZE = 299
#: input preparations: TensorFlow's (EDM, the seed, published FIDs) and pytorch-fid's
RESIZES = ("tf", "pytorch-fid")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], *,
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35 block (``Mixed_5b..5d``): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class BlockB(nn.Module):
    """35 -> 17 reduction (``Mixed_6a``)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``Mixed_6b..6e``)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):
    """17 -> 8 reduction (``Mixed_7a``)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2),
        ], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches (``Mixed_7b``, ``Mixed_7c``).

    ``max_pool`` selects TensorFlow's max pool in the pool branch (``Mixed_7c``).
    """

    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """FID's Inception-v3: uint8 ``[N, H, W, C]`` (or float ``[N, C, H, W]`` in ``[0, 1]``) to
    ``[N, 2048]`` pool features. Grey images (C = 1) are repeated to RGB, as PIL's ``convert("RGB")``.
    """

    def __init__(self, *, resize: str = "tf") -> None:
        super().__init__()
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
        self.resize = resize
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)  # the classifier (unused by FID; kept so the file loads whole)

    @staticmethod
    def preprocess(images: Tensor, resize: str = "tf") -> Tensor:
        """uint8 NHWC or float NCHW in [0, 1] -> float NCHW 299x299 in about [-1, 1] (module doc)."""
        if images.dtype == torch.uint8:
            x = images.permute(0, 3, 1, 2).float() / 255.0
        else:
            x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 4:
            x = x[:, :3]
        if x.shape[1] != 3:
            raise ValueError(f"expected 1, 3 or 4 channels, got {x.shape[1]}")
        if resize == "pytorch-fid":
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            return 2 * x - 1
        return (_tf_resize(x) * 255 - 128) / 128

    def features(self, x: Tensor) -> Tensor:
        """Preprocessed ``[N, 3, 299, 299]`` -> ``[N, 2048]``."""
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3):
            x = layer(x)
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean((2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.features(self.preprocess(images, self.resize))


def _tf_resize(x: Tensor) -> Tensor:
    """TensorFlow 1's bilinear resize to 299x299 (``align_corners=False``, no half-pixel centres):
    output pixel ``i`` samples the input at ``i * size / 299``, clamped at the last pixel.

    ``grid_sample`` with ``align_corners=False`` samples output pixel ``i`` at input pixel
    ``(i + 1/2) size / 299 - 1/2``; shifting the grid by ``1/size - 1/299`` (normalised units,
    i.e. ``1/2 - size / 598`` pixels) moves that to ``i * size / 299``."""
    n, c, h, w = x.shape
    if (h, w) == (INPUT_SIZE, INPUT_SIZE):
        return x
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / INPUT_SIZE], [0.0, 1.0, 1 / h - 1 / INPUT_SIZE]],
                         dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, INPUT_SIZE, INPUT_SIZE], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def load_state_dict(net: FIDInceptionV3, state: dict[str, Tensor]) -> None:
    """Load ``state`` strictly, except BatchNorm's ``num_batches_tracked`` (absent in old files)."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"not an FID Inception state dict: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that keep activations O(1) through the depth (He-normal convolutions,
    BatchNorm statistics and affine terms near identity). For tests and timing only."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features ** 0.5)
                module.bias.zero_()
    return net
