"""Frechet Inception Distance (Heusel et al. 2017, arXiv:1706.08500, eq. 6), as EDM and pytorch-fid.

``FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)`` between Gaussian fits of the 2048-d pool
features of FID's Inception-v3 (:mod:`.inception`). Conventions kept for comparability with
published numbers: samples are quantised to uint8 as the PNGs they would be saved as; moments in
float64 with the covariance over N - 1; ``scipy.linalg.sqrtm`` (real part), retried with 1e-6
added to both diagonals when the product is singular (pytorch-fid). Reference statistics are
``.npz`` files with ``mu`` and ``sigma`` (EDM's format) and, when we write them, ``count``.
FID depends on the sample count: it is printed, stored, and a mismatch or fewer than 50,000
samples is warned about, never hidden.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler.errors import OptionError, require
from diffsampler.options import choice, in_range, option

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "FID",
    "FIDOptions",
    "FeatureMoments",
    "Stats",
    "count_warnings",
    "frechet_distance",
    "image_features",
    "load_inception",
    "load_stats",
    "save_stats",
]

STANDARD_COUNT = 50_000
"""Sample count of published FIDs (EDM, the seed)."""
REF_ENV = "DIFFSAMPLER_FID_REF"


def from_env(value: str | None, env: str, metric: str, what: str, option: str) -> str:
    """An option's value, else the environment variable ``env``; the error names both ways,
    and how ``compare`` passes the option (``--metric "NAME[option=PATH]"``)."""
    if value:
        return value
    if os.environ.get(env):
        return os.environ[env]
    raise OptionError(
        f"metric {metric!r} needs {what}: pass {option}=PATH "
        f'(compare: --metric "{metric}[{option}=PATH]") or set {env}=PATH'
    )


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6
) -> float:
    """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (Dowson & Landau 1982).

    ``tr (S1 S2)^1/2`` from ``scipy.linalg.sqrtm`` in float64, real part; a non-finite square
    root (singular product) is retried with ``eps`` on both diagonals, and an imaginary part
    larger than 1e-3 on the diagonal is an error (pytorch-fid's handling).
    """
    scipy_linalg = require("scipy.linalg", extra="metrics", purpose="the Frechet distance")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise OptionError(
            f"moments of different shapes: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm's "singular matrix" notice; handled below
        covmean = scipy_linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = scipy_linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise OptionError(
                f"the Frechet distance's matrix square root has an imaginary part "
                f"{np.abs(covmean.imag).max():.3g}: the covariances are not valid"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class FeatureMoments:
    """Running mean and covariance (N - 1) of feature batches, in float64 (EDM's accumulation)."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float64)
        total = f.sum(0) if self._sum is None else self._sum + f.sum(0)
        outer = f.T @ f if self._outer is None else self._outer + f.T @ f
        # one assignment after the arithmetic: a Ctrl-C in between leaves the moments consistent
        self._sum, self._outer, self.count = total, outer, self.count + len(f)

    def state(self) -> dict[str, np.ndarray]:
        """The running sums (for an interrupted reference); :meth:`from_state` restores them."""
        if self._sum is None or self._outer is None:
            return {"count": np.int64(0)}  # type: ignore[dict-item]
        return {"count": np.int64(self.count), "sum": self._sum, "outer": self._outer}  # type: ignore[dict-item]

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> FeatureMoments:
        moments = cls()
        moments.count = int(state["count"])
        if moments.count:
            moments._sum = np.asarray(state["sum"], np.float64)
            moments._outer = np.asarray(state["outer"], np.float64)
        return moments

    def stats(self) -> Stats:
        if self.count < 2 or self._sum is None or self._outer is None:
            raise OptionError(f"FID statistics need at least 2 images, got {self.count}")
        mu = self._sum / self.count
        sigma = (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return Stats(mu=mu, sigma=sigma, count=self.count)


@attrs.frozen(kw_only=True)
class Stats:
    """Gaussian moments of Inception features; ``count`` is None for files that do not say."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None
    #: how the images were prepared for Inception (``tf`` / ``pytorch-fid``); None: not recorded
    resize: str | None = None


def save_stats(path: str | os.PathLike[str], stats: Stats) -> Path:
    """Write ``mu``, ``sigma`` (float64, EDM's keys) and ``count`` to an ``.npz``."""
    p = Path(path)
    arrays: dict[str, Any] = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64)}
    if stats.count is not None:
        arrays["count"] = np.int64(stats.count)
    if stats.resize is not None:
        arrays["resize"] = np.array(stats.resize)
    with open(p, "wb") as f:  # an open file keeps numpy from appending a second ".npz"
        np.savez(f, **arrays)
    return p


def load_stats(path: str | os.PathLike[str]) -> Stats:
    """Read an ``.npz`` with ``mu`` and ``sigma`` (EDM's reference files, or ours with ``count``)."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"no such FID statistics file: {str(p)!r}")
    from diffsampler.imagesets import open_npz

    data = open_npz(p)
    if data is None:
        raise OptionError(f"{str(p)!r} is not an .npz of FID statistics (written by diffsampler fid ref)")
    with data:
        if "mu" not in data or "sigma" not in data:
            raise OptionError(f"{p}: FID statistics need 'mu' and 'sigma' arrays, found {sorted(data.files)}")
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        count = int(data["count"]) if "count" in data else None
        resize = str(data["resize"]) if "resize" in data else None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise OptionError(f"{p}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return Stats(mu=mu, sigma=sigma, count=count, resize=resize)


def check_resize(recorded: str | None, resize: str, what: str) -> None:
    """Refuse features prepared one way (``recorded``, from a file) against images prepared another."""
    if recorded is not None and recorded != resize:
        raise OptionError(
            f"{what} was computed with resize={recorded}, this run uses resize={resize}: Inception "
            f"features of the two do not compare; use resize={recorded} (--resize {recorded}, or the "
            f"metric option resize={recorded} in compare) or rebuild it"
        )


def count_warnings(count: int, ref_count: int | None) -> list[str]:
    """Why an FID at ``count`` samples may not compare with published numbers (empty: fine)."""
    out = []
    if ref_count is not None and ref_count != count:
        out.append(f"FID of {count} samples against reference statistics of {ref_count} images")
    if count < STANDARD_COUNT:
        out.append(
            f"FID of {count} samples: published FIDs use {STANDARD_COUNT}; fewer samples bias FID upwards"
        )
    return out


def _device(name: str) -> str:
    from diffsampler.devices import resolve_device

    return resolve_device(name)


def load_inception(weights: str | os.PathLike[str] | None = None, *, device: str = "cpu",
                   random_weights: bool = False, resize: str = "tf") -> nn.Module:
    """FID's Inception-v3 in eval mode on ``device``, weights resolved by :mod:`.weights`;
    ``resize``: how images are prepared (:mod:`.inception`: ``tf``, as published FIDs, or
    ``pytorch-fid``).

    ``random_weights=True`` skips the file (for tests and timing only: such features mean nothing).
    """
    import torch

    from .inception import FIDInceptionV3, load_state_dict, randomize_
    from .weights import resolve_fid_weights

    net = FIDInceptionV3(resize=resize)
    if random_weights:
        randomize_(net)
    else:
        path = resolve_fid_weights(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            load_state_dict(net, state)
        except Exception as exc:  # a corrupt or foreign file
            from diffsampler.errors import ModelLoadError

            raise ModelLoadError(f"{path}: not the FID Inception weights ({exc})") from None
    return net.eval().requires_grad_(False).to(_device(device))


def image_features(
    net: nn.Module,
    batches: Iterable[np.ndarray | Tensor],
    *,
    batch: int = 250,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Float64 ``[n, 2048]`` features per chunk of at most ``batch`` images.

    Each item of ``batches`` is uint8 ``[n, H, W, C]`` images (numpy or torch), or samples
    ``[n, C, H, W]`` in ``[-1, 1]`` (any float tensor or array), which are first quantised to
    uint8 as EDM saves them.
    """
    import torch

    from diffsampler.images import to_uint8

    device = next(net.parameters()).device
    for item in batches:
        images = item.detach().cpu().numpy() if hasattr(item, "detach") else np.asarray(item)
        if images.dtype != np.uint8:
            if images.ndim != 4:
                raise OptionError(f"expected image batches [N, C, H, W], got shape {images.shape}")
            images = to_uint8(images)
        for start in range(0, len(images), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).to(device)
            with torch.no_grad():
                yield net(chunk).double().cpu().numpy()
            if on_batch is not None:
                on_batch(len(chunk))


@attrs.frozen(kw_only=True)
class FIDOptions:
    ref: str | None = option(
        None, help="reference statistics .npz (mu, sigma) from 'diffsampler fid ref' (else $DIFFSAMPLER_FID_REF)"
    )
    weights: str | None = option(None, help="Inception weights file (else $DIFFSAMPLER_FID_WEIGHTS, cache, download)")
    device: str = option("auto", help="device for the Inception network: auto, cpu, cuda, cuda:N")
    batch: int = option(250, help="images per Inception forward pass", validator=in_range(1))
    resize: str = option("tf", help="input resize to 299: tf (TensorFlow's, as EDM and published FIDs) "
                         "or pytorch-fid", validator=choice("tf", "pytorch-fid"))


class FID:
    """Frechet Inception Distance of the samples to reference statistics (Heusel et al. 2017)."""

    paper = "Heusel et al. 2017, arXiv:1706.08500 (FID), Inception-v3 of TensorFlow 2015-12-05"
    higher_is_better = False

    def __init__(self, *, ref: str | None = None, weights: str | None = None, device: str = "auto",
                 batch: int = 250, resize: str = "tf") -> None:
        path = from_env(ref, REF_ENV, "fid", "reference statistics", "ref")
        self.ref = load_stats(path)
        check_resize(self.ref.resize, resize, f"reference {str(path)!r}")
        self.weights, self.device, self.batch, self.resize = weights, device, batch, resize
        self._net: Any = None
        self._warned: set[str] = set()

    def compute(
        self,
        batches: Iterable[Tensor],
        *,
        model: Any = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, float]:
        if self._net is None:
            self._net = load_inception(self.weights, device=self.device, resize=self.resize)
        moments = FeatureMoments()
        for features in image_features(self._net, batches, batch=self.batch):
            moments.add(features)
        stats = moments.stats()
        if stats.mu.shape != self.ref.mu.shape:
            raise OptionError(f"features of dimension {len(stats.mu)}, reference of {len(self.ref.mu)}")
        for message in count_warnings(stats.count or 0, self.ref.count):
            if message not in self._warned:  # once per metric, not once per compare cell
                self._warned.add(message)
                warnings.warn(message, stacklevel=2)
        return {"fid": frechet_distance(stats.mu, stats.sigma, self.ref.mu, self.ref.sigma)}


def fid_metric(*, ref: str | None = None, weights: str | None = None, device: str = "auto", batch: int = 250,
               resize: str = "tf") -> FID:
    """FID against reference statistics (FID's Inception-v3; TensorFlow's input resize by default)."""
    return FID(ref=ref, weights=weights, device=device, batch=batch, resize=resize)


fid_metric.paper = FID.paper  # type: ignore[attr-defined]
