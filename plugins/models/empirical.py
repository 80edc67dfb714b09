"""The optimal denoiser of a finite data set: the posterior mean over its points.

For data ``y_1..y_N`` (the empirical distribution) and ``x = y + sigma * eps``::

    D(x; sigma) = sum_i softmax_i(-|x - y_i|^2 / (2 sigma^2)) y_i

the denoiser a diffusion model converges to when it memorises its training set; analysed in
Chen et al. 2023, "A Geometric Perspective on Diffusion Models" (arXiv:2305.19947), Sec. 4. The
sum runs over chunks of the data with a running log-sum-exp, so memory stays bounded for tens of
thousands of points; distances are computed in float64 (at sigma = 0.002 a float32 distance
error would swamp the softmax).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler import in_range, option, positive
from diffsampler.denoiser import DenoiserBase
from diffsampler.errors import MissingExtraError, OptionError

if TYPE_CHECKING:
    import torch

DIGITS = "digits"


@attrs.frozen(kw_only=True)
class EmpiricalOptions:
    data: str = option(
        DIGITS,
        help="'digits' (scikit-learn's 8x8 digits, 1,797 images, extra [digits]), an .npz "
        "array [N, C, H, W] in [-1, 1] (key 'data' or the first array), an image-set .npz "
        "(uint8 [N, H, W, C], as 'sample' writes 'arr_0'), or a folder of PNGs",
    )
    limit: int = option(0, help="use only the first N points (0: all)", validator=in_range(0))
    chunk: int = option(4096, help="data points per chunk (bounds memory)", validator=in_range(1))
    sigma_min: float = option(0.002, help="lowest noise level", validator=positive)
    sigma_max: float = option(80.0, help="highest noise level", validator=positive)


def load_digits_data() -> np.ndarray:
    """scikit-learn's bundled 8x8 digits as ``[1797, 1, 8, 8]`` in ``[-1, 1]``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingExtraError("scikit-learn", "digits", "the 'digits' data set") from exc
    images = load_digits().images.astype(np.float64)  # values 0..16
    return (images / 8.0 - 1.0)[:, None, :, :]


_EXPECTED = (
    "expected an .npz holding float [N, C, H, W] in [-1, 1] (key 'data' or the first array) or an "
    "image set (uint8 [N, H, W, C], key 'arr_0'), a folder of PNGs, or 'digits'"
)
#: float data reaching beyond this magnitude is taken for unscaled (e.g. 0..255) data
_FAR_OUTSIDE = 1.5


def load_data(source: str) -> np.ndarray:
    """Data points ``[N, C, H, W]`` (float64) from ``digits``, an ``.npz`` or a PNG folder."""
    if source == DIGITS:
        return load_digits_data()
    path = Path(source)
    if not path.exists():
        raise OptionError(f"empirical data {source!r}: no such file or folder (or use 'digits')")
    if path.is_dir():
        from diffsampler.imagesets import iter_images

        return _from_images(np.concatenate(list(iter_images(path))))  # errors on mixed sizes
    return _from_array(_read_npz(path, source), source)


def _from_images(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` images as float64 ``[N, C, H, W]`` in ``[-1, 1]``."""
    return images.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0


def _read_npz(path: Path, source: str) -> np.ndarray:
    """The data array of an ``.npz``: key ``data``, else its first array."""
    from diffsampler.imagesets import open_npz

    npz = open_npz(path)
    if npz is None:
        raise OptionError(f"empirical data {source!r} is not an .npz file: {_EXPECTED}")
    with npz:
        if any(name.endswith("data.pkl") for name in npz.zip.namelist()):
            raise OptionError(f"empirical data {source!r} is a torch.save file, not an .npz: {_EXPECTED}")
        if not npz.files:
            raise OptionError(f"empirical data {source!r} holds no array: {_EXPECTED}")
        key = "data" if "data" in npz.files else npz.files[0]
        try:
            data = npz[key]
        except (OSError, ValueError, EOFError) as exc:  # a corrupt member or a pickled object array
            raise OptionError(f"empirical data {source!r}: cannot read {key!r}: {str(exc)[:200]}") from None
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiu":
        raise OptionError(f"empirical data {source!r}: {key!r} holds no numeric array; {_EXPECTED}")
    return data


def _from_array(data: np.ndarray, source: str) -> np.ndarray:
    """An image set (uint8 NHWC) converted as PNGs are; float data checked for rank and range."""
    if data.ndim != 4 or len(data) == 0:
        raise OptionError(f"empirical data {source!r}: got an array of shape {data.shape}; {_EXPECTED}")
    if data.dtype == np.uint8:
        if data.shape[-1] > 4:
            raise OptionError(f"empirical data {source!r}: uint8 data are images [N, H, W, C] (C <= 4), "
                              f"got shape {data.shape}")
        return _from_images(data)
    data = data.astype(np.float64)
    low, high = float(data.min()), float(data.max())
    if not np.isfinite([low, high]).all():
        raise OptionError(f"empirical data {source!r} holds non-finite values")
    if max(-low, high) > _FAR_OUTSIDE:
        warnings.warn(
            f"empirical data {source!r} spans [{low:.4g}, {high:.4g}], far outside [-1, 1], the range "
            "images are sampled in: rescale it (or store uint8 [N, H, W, C] images as 'arr_0')",
            stacklevel=2,
        )
    return data


class EmpiricalDenoiser(DenoiserBase):
    """The exact denoiser of the empirical distribution of ``data`` ``[N, *shape]``."""

    paper = (
        "Chen et al. 2023, A Geometric Perspective on Diffusion Models, arXiv:2305.19947 "
        "(optimal denoiser of the empirical data distribution)"
    )

    def __init__(
        self,
        data: np.ndarray,
        *,
        chunk: int = 4096,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        spec: dict[str, Any] | None = None,
    ) -> None:
        data = np.asarray(data, dtype=np.float64)
        self._init_denoiser(data.shape[1:], sigma_min, sigma_max)
        self.points = data.reshape(len(data), -1)
        self.chunk = int(chunk)
        digest = hashlib.sha256(np.ascontiguousarray(self.points).tobytes()).hexdigest()[:16]
        self.spec = {**(spec or {}), "points": len(self.points), "data_sha256": digest}
        self._cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def _data(self, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if device not in self._cache:
            pts = torch.as_tensor(self.points, dtype=torch.float64, device=device)
            self._cache[device] = (pts, (pts * pts).sum(1))
        return self._cache[device]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        import torch

        pts, sq_norms = self._data(x.device)
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        inv = 1.0 / (2.0 * sigma.to(torch.float64).reshape(-1, 1) ** 2)
        x_sq = (flat * flat).sum(1, keepdim=True)
        running_max = torch.full((flat.shape[0], 1), -torch.inf, dtype=torch.float64, device=x.device)
        total = torch.zeros((flat.shape[0], 1), dtype=torch.float64, device=x.device)
        acc = torch.zeros_like(flat)
        for start in range(0, pts.shape[0], self.chunk):  # online softmax over data chunks
            p, n2 = pts[start : start + self.chunk], sq_norms[start : start + self.chunk]
            logits = -(x_sq - 2.0 * flat @ p.T + n2[None, :]) * inv
            new_max = torch.maximum(running_max, logits.max(1, keepdim=True).values)
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(logits - new_max)
            total = total * rescale + weights.sum(1, keepdim=True)
            acc = acc * rescale + weights @ p
            running_max = new_max
        return (acc / total).to(x.dtype).reshape(x.shape)

    def mean(self) -> np.ndarray:
        return self.points.mean(0)

    def covariance(self) -> np.ndarray:
        centred = self.points - self.mean()
        return centred.T @ centred / len(self.points)

    def __repr__(self) -> str:
        return f"EmpiricalDenoiser(points={len(self.points)}, shape={self._shape})"


def empirical(
    *,
    data: str = DIGITS,
    limit: int = 0,
    chunk: int = 4096,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> EmpiricalDenoiser:
    """Optimal denoiser of a finite data set (default: scikit-learn's 8x8 digits)."""
    if not sigma_min < sigma_max:
        raise OptionError(f"model 'empirical': need sigma_min < sigma_max, got {sigma_min:g} and {sigma_max:g}")
    points = load_data(data)
    if limit:
        points = points[:limit]
    source = data if data == DIGITS else os.path.abspath(data)
    spec = {"model": "empirical", "data": source, "limit": limit, "sigma_min": sigma_min,
            "sigma_max": sigma_max}
    return EmpiricalDenoiser(points, chunk=chunk, sigma_min=sigma_min, sigma_max=sigma_max, spec=spec)


empirical.paper = EmpiricalDenoiser.paper  # type: ignore[attr-defined]
