"""Precision, recall, density and coverage (Naeem et al. 2020, arXiv:2002.09797, eqs. 1-4).

With ``NND_k(x)`` the distance from ``x`` to its k-th nearest neighbour in its own set (the point
itself counts as its 0-th neighbour) and ``B(x, r)`` the open ball:

* precision = fraction of fake points inside some real ball ``B(X_i, NND_k(X_i))``;
* recall    = fraction of real points inside some fake ball ``B(Y_j, NND_k(Y_j))``;
* density   = ``1 / (k M) * sum_j #{i : Y_j in B(X_i, NND_k(X_i))}``;
* coverage  = fraction of real points whose own ball contains some fake point.

Euclidean distances are computed in blocks of ``chunk x chunk`` (memory bounded: 50k x 50k never
forms the full matrix), in float64 by default, as the reference implementation's scikit-learn
distances.

The scores depend on the set sizes (the k-NN radii shrink as a set grows), so, as the seed's
``prdc.py``, each set is cut to ``max_size`` (5,000) points first: the random subset EDM's
``ImageFolderDataset(max_size=..., random_seed=0)`` keeps (:func:`subset`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler.errors import OptionError
from diffsampler.options import choice, in_range, option

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = ["MAX_SIZE", "PRDC", "PRDCOptions", "check_k", "knn_radii", "prdc", "set_size", "subset", "take_rows"]

#: points per set, as the seed's prdc.py (5,000 generated and 5,000 reference images)
MAX_SIZE = 5000


def subset(n: int, max_size: int, seed: int = 0) -> np.ndarray | None:
    """The sorted indices of the ``max_size`` of ``n`` items that EDM's ``ImageFolderDataset``
    keeps with ``random_seed=seed`` (a ``RandomState(seed)`` shuffle, the first ``max_size``);
    None when all are kept (``max_size`` 0 or at least ``n``)."""
    if not max_size or n <= max_size:
        return None
    order = np.arange(n, dtype=np.int64)
    np.random.RandomState(seed % (1 << 31)).shuffle(order)
    return np.sort(order[:max_size])


def take_rows(batches: Iterable[Any], keep: np.ndarray | None) -> Iterator[Any]:
    """The rows of a stream of batches whose running index is in ``keep`` (sorted; None: all)."""
    if keep is None:
        yield from batches
        return
    start = 0
    for batch in batches:
        n = len(batch)
        rows = keep[(keep >= start) & (keep < start + n)] - start
        start += n
        if len(rows):
            yield batch[rows.tolist()]


def _blocks(n: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def _distances(a: Tensor, b: Tensor, a2: Tensor, b2: Tensor) -> Tensor:
    """Euclidean distances ``[len(a), len(b)]`` from squared norms and one product."""
    sq = a2[:, None] + b2[None, :] - 2 * (a @ b.T)
    return sq.clamp_min_(0).sqrt_()


def knn_radii(x: Tensor, k: int, *, chunk: int = 4096) -> Tensor:
    """``NND_k`` of every row of ``x``: the (k+1)-th smallest distance to the set, self included."""
    n = len(x)
    if n <= k:
        raise OptionError(f"PRDC with k={k} needs more than {k} points per set, got {n}")
    import torch

    norms = (x * x).sum(1)
    radii = torch.empty(n, dtype=x.dtype, device=x.device)
    for rows in _blocks(n, chunk):
        best = None
        for cols in _blocks(n, chunk):
            d = _distances(x[rows], x[cols], norms[rows], norms[cols])
            best = d if best is None else torch.cat([best, d], 1)
            best = best.topk(min(k + 1, best.shape[1]), dim=1, largest=False).values
        radii[rows] = best.max(1).values  # type: ignore[union-attr]
    return radii


def prdc(
    real: np.ndarray | Tensor,
    fake: np.ndarray | Tensor,
    *,
    k: int = 5,
    chunk: int = 4096,
    dtype: str = "float64",
    device: str = "cpu",
) -> dict[str, float]:
    """Precision, recall, density, coverage of ``fake`` ``[M, D]`` against ``real`` ``[N, D]``."""
    import torch

    def tensor(a: Any) -> torch.Tensor:
        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
        return t.to(device=device, dtype=getattr(torch, dtype)).reshape(len(t), -1)

    x, y = tensor(real), tensor(fake)
    if x.shape[1] != y.shape[1]:
        raise OptionError(f"real features of dimension {x.shape[1]}, fake of {y.shape[1]}")
    r_real, r_fake = knn_radii(x, k, chunk=chunk), knn_radii(y, k, chunk=chunk)
    x2, y2 = (x * x).sum(1), (y * y).sum(1)
    in_real_balls = torch.zeros(len(y), dtype=torch.int64, device=x.device)  # per fake point
    recalled = torch.zeros(len(x), dtype=torch.bool, device=x.device)  # per real point
    nearest_fake = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
    for rows in _blocks(len(x), chunk):
        for cols in _blocks(len(y), chunk):
            d = _distances(x[rows], y[cols], x2[rows], y2[cols])
            in_real_balls[cols] += (d < r_real[rows, None]).sum(0)
            recalled[rows] |= (d < r_fake[None, cols]).any(1)
            nearest_fake[rows] = torch.minimum(nearest_fake[rows], d.min(1).values)
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(in_real_balls.double().mean() / k),
        "coverage": float((nearest_fake < r_real).double().mean()),
    }


@attrs.frozen(kw_only=True)
class PRDCOptions:
    ref: str | None = option(
        None, help="real features: an .npz with 'features' [N, D] (diffsampler fid ref --features), "
        "or an image set (folder, .zip, .npz) to embed (else $DIFFSAMPLER_PRDC_REF)"
    )
    k: int = option(5, help="nearest neighbour k", validator=in_range(1))
    max_size: int = option(MAX_SIZE, help="points per set: EDM's random subset (seed 0) as the seed's "
                           "prdc.py; 0: every point", validator=in_range(0))
    chunk: int = option(4096, help="rows per distance block (memory ~ 8 chunk^2 bytes)", validator=in_range(1))
    dtype: str = option("float64", help="distance precision", validator=choice("float64", "float32"))
    weights: str | None = option(None, help="Inception weights file (see the fid metric)")
    resize: str = option("tf", help="input resize to 299 (see the fid metric): tf or pytorch-fid",
                         validator=choice("tf", "pytorch-fid"))
    device: str = option("auto", help="device: auto, cpu, cuda, cuda:N")
    batch: int = option(250, help="images per Inception forward pass", validator=in_range(1))


def stored_features(path: str | os.PathLike[str], *, real: bool = True, resize: str | None = None) -> np.ndarray | None:
    """The ``features`` array of an ``.npz`` written by ``diffsampler fid ref --features``; None
    for anything else (an image set, checked when it is read). FID statistics without features
    given as the real set are refused with how to rebuild them, and features recorded with
    another ``resize`` than this run's."""
    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        return None
    from diffsampler.imagesets import open_npz

    data = open_npz(p)
    if data is None:
        return None  # not an npz at all: the image-set reader says so
    with data:
        if "features" in data:
            if resize is not None and "resize" in data:
                from .fid import check_resize

                check_resize(str(data["resize"]), resize, f"{str(p)!r}")
            return np.asarray(data["features"])
        if real and "mu" in data and "sigma" in data:
            raise OptionError(
                f"{str(p)!r} holds FID statistics without features: rebuild it with diffsampler fid ref --features"
            )
    return None


def set_size(path: str | os.PathLike[str], *, features: bool = False) -> int:
    """How many images the set at ``path`` holds; a file with none (e.g. a torch ``.pth``, which
    is a zip too) is refused as no image set (``features``: nor a features ``.npz``)."""
    from diffsampler.imagesets import count_images

    n = count_images(path)
    if n == 0:
        p = Path(path)
        if p.is_dir():
            raise OptionError(f"{str(p)!r} holds no PNG images")
        also = " nor a features .npz (diffsampler fid ref --features)" if features else ""
        raise OptionError(f"{str(p)!r} is not an image set (a folder or .zip of PNGs, an .npz with arr_0){also}")
    return n


def check_k(k: int, n: int, what: str, *, max_size: int = 0) -> None:
    """Refuse ``k`` for a set of ``n`` points before anything is embedded (``what`` names the set),
    and a ``max_size`` that leaves too few."""
    if max_size and max_size <= k:
        raise OptionError(f"PRDC with k={k} needs more than {k} points per set: max_size {max_size} leaves too few")
    if n <= k:
        raise OptionError(f"PRDC with k={k} needs more than {k} points per set: {what} has {n}")


def _embed(path: str, net_factory: Any, *, batch: int = 250, keep: np.ndarray | None = None) -> np.ndarray:
    """Inception features of the image set at ``path`` (of the images ``keep`` picks)."""
    from diffsampler.imagesets import iter_images

    from .fid import image_features

    images = take_rows(iter_images(path, batch), keep)
    return np.concatenate(list(image_features(net_factory(), images, batch=batch)))


class PRDC:
    """Precision, recall, density and coverage in Inception feature space (Naeem et al. 2020)."""

    paper = "Naeem et al. 2020, arXiv:2002.09797 (density and coverage); Kynkaanniemi et al. 2019"
    higher_is_better = True

    def __init__(self, *, ref: str | None = None, k: int = 5, max_size: int = MAX_SIZE, chunk: int = 4096,
                 dtype: str = "float64", weights: str | None = None, device: str = "auto", batch: int = 250,
                 resize: str = "tf") -> None:
        from .fid import from_env

        self.ref_path = from_env(ref, "DIFFSAMPLER_PRDC_REF", "prdc", "real features or images", "ref")
        self.k, self.max_size, self.chunk, self.dtype = k, max_size, chunk, dtype
        self.weights, self.device, self.batch, self.resize = weights, device, batch, resize
        self._net: Any = None
        # checked now, so that compare refuses a wrong ref before it samples
        self._real: np.ndarray | None = stored_features(self.ref_path, resize=resize)
        if self._real is None:
            from diffsampler.imagesets import check_image_set

            check_image_set(self.ref_path)
        self._real_count = len(self._real) if self._real is not None else set_size(self.ref_path, features=True)
        if self._real is not None and (keep := subset(len(self._real), max_size)) is not None:
            self._real = self._real[keep]
        check_k(k, self._real_count, f"ref {self.ref_path!r}", max_size=max_size)

    def _inception(self) -> Any:
        if self._net is None:
            from .fid import load_inception

            self._net = load_inception(self.weights, device=self.device, resize=self.resize)
        return self._net

    def check_run(self, *, seeds: Sequence[int], labels: Sequence[int] | None = None) -> None:
        """Refuse, before ``compare`` samples, too few samples for ``k`` neighbours."""
        check_k(self.k, len(seeds), "the sample set", max_size=self.max_size)

    def compute(
        self,
        batches: Iterable[Tensor],
        *,
        model: Any = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, float]:
        from .fid import _device, image_features

        batches = list(batches)
        count = sum(len(b) for b in batches)
        check_k(self.k, count, "the sample set", max_size=self.max_size)  # before Inception runs
        if self._real is None:
            self._real = _embed(self.ref_path, self._inception, batch=self.batch,
                                keep=subset(self._real_count, self.max_size))
        chosen = take_rows(batches, subset(count, self.max_size))
        fake = np.concatenate(list(image_features(self._inception(), chosen, batch=self.batch)))
        return prdc(self._real, fake, k=self.k, chunk=self.chunk, dtype=self.dtype,
                    device=_device(self.device))


def prdc_metric(**options: Any) -> PRDC:
    """Precision, recall, density, coverage against real Inception features (k-NN balls)."""
    return PRDC(**options)


prdc_metric.paper = PRDC.paper  # type: ignore[attr-defined]
