"""Exact ODE endpoints of analytic models, by a high-precision adaptive integrator, cached.

For a model whose denoiser is exact, the probability-flow ODE written in ``tau = log sigma``,
``dx/dtau = x - D(x; sigma)``, is smooth and non-stiff over the whole range; scipy's DOP853
(8th-order Dormand-Prince) at ``rtol = atol = 1e-10`` gives its endpoint to far below any
few-step solver's error. Each seed is integrated on its own (its own step-size control), so a
seed's endpoint does not depend on which other seeds were asked for, and is cached on disk
under a key made of the model's spec, the sigma range and the tolerance. Every solve is done a
second time at ``rtol = 1e-8``; the largest difference between the two is the reported accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from diffsampler import weights
from diffsampler.errors import MissingExtraError, OptionError
from diffsampler.protocols import Analytic, Denoiser

__all__ = ["GroundTruth", "cache_dir", "exact_endpoints"]

RTOL = 1e-10
CHECK_RTOL = 1e-8


def cache_dir() -> Path:
    """``$DIFFSAMPLER_CACHE/ground-truth`` (default ``~/.cache/diffsampler/ground-truth``)."""
    return weights.cache_dir() / "ground-truth"


@attrs.frozen(kw_only=True)
class GroundTruth:
    """Exact endpoints ``[n, *shape]`` (float64) of the given seeds, and their accuracy."""

    seeds: tuple[int, ...]
    endpoints: np.ndarray = attrs.field(eq=False)
    accuracy: float  # max |x(rtol=1e-10) - x(rtol=1e-8)| over seeds and coordinates


def _key(model: Analytic, sigma_max: float, sigma_min: float) -> str:
    payload = json.dumps(
        {"spec": model.spec, "sigma_max": sigma_max, "sigma_min": sigma_min, "rtol": RTOL,
         "method": "DOP853/log-sigma/v1"},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _solve(model: Denoiser, x0: np.ndarray, sigma_max: float, sigma_min: float, rtol: float) -> np.ndarray:
    import torch

    try:
        from scipy.integrate import solve_ivp
    except ImportError as exc:  # pragma: no cover
        raise MissingExtraError("scipy", "scipy", "the exact ground truth") from exc

    shape = (1, *model.shape)

    def rhs(tau: float, x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(x).reshape(shape)
        sigma = torch.full((1,), float(np.exp(tau)), dtype=torch.float64)
        with torch.no_grad():
            return (xt - model(xt, sigma)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (np.log(sigma_max), np.log(sigma_min)), x0, method="DOP853",
                    rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"ground-truth integration failed: {sol.message}")
    return sol.y[:, -1]


def exact_endpoints(
    model: Denoiser,
    seeds: Sequence[int],
    *,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    cache: Path | bool | None = True,
) -> GroundTruth:
    """The exact solution at ``sigma_min`` from ``seed_noise(seed) * sigma_max``, per seed."""
    from diffsampler.seeds import seed_noise

    if not isinstance(model, Analytic):
        raise OptionError(
            f"{type(model).__name__} is not an analytic model: exact endpoints need a model "
            "whose denoiser is exact (gmm, empirical)"
        )
    hi = float(model.sigma_max if sigma_max is None else sigma_max)
    lo = float(model.sigma_min if sigma_min is None else sigma_min)
    folder = None
    if cache:
        folder = (cache if isinstance(cache, Path) else cache_dir()) / _key(model, hi, lo)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.json").write_text(json.dumps(
            {"spec": model.spec, "sigma_max": hi, "sigma_min": lo, "rtol": RTOL}, indent=2))
    rows, accuracy = [], 0.0
    for seed in seeds:
        path = folder / f"seed-{int(seed)}.npz" if folder else None
        if path is not None and path.exists():
            with np.load(path) as data:
                rows.append(data["x"])
                accuracy = max(accuracy, float(data["accuracy"]))
            continue
        x0 = seed_noise([seed], model.shape, dtype=None)[0].double().numpy().reshape(-1) * hi
        fine = _solve(model, x0, hi, lo, RTOL)
        check = _solve(model, x0, hi, lo, CHECK_RTOL)
        err = float(np.abs(fine - check).max())
        accuracy = max(accuracy, err)
        rows.append(fine.reshape(model.shape))
        if path is not None:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
            np.savez(tmp, x=rows[-1], accuracy=err)
            os.replace(tmp, path)
    return GroundTruth(seeds=tuple(int(s) for s in seeds), endpoints=np.stack(rows), accuracy=accuracy)


def describe(truth: GroundTruth) -> dict[str, Any]:
    return {"seeds": len(truth.seeds), "accuracy": truth.accuracy}
