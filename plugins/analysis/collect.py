"""Sampling trajectories for an analysis: model, solver, schedule and seeds resolved once.

For a latent model (one with ``decode``) the trajectories stay in the model's own (latent) space:
that is the space the ODE is solved in and whose geometry the papers describe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler import Analytic, get_model, get_schedule, get_solver, resolve_num_steps, seed_noise
from diffsampler.devices import resolve_device
from diffsampler.errors import OptionError
from diffsampler.options import options_as_dict

if TYPE_CHECKING:
    import torch

__all__ = ["Setup", "collect", "default_dtype"]

_DTYPES = ("float32", "float64")


@attrs.frozen(kw_only=True)
class Setup:
    """Everything an analysis needs: the components, the sigmas and the trajectories.

    ``trajectory`` is ``[num_steps, len(seeds), *model.shape]``, point ``i`` at ``sigmas[i]``.
    ``config`` is the resolved configuration (saved beside the results).
    """

    model: Any
    solver: Any
    sigmas: np.ndarray
    seeds: tuple[int, ...]
    trajectory: torch.Tensor
    nfe: int
    config: dict[str, Any]
    cond: Any = None


def default_dtype(model: Any) -> str:
    """float64 for analytic models (exact denoisers), float32 for networks."""
    return "float64" if isinstance(model, Analytic) else "float32"


def collect(
    *,
    model: str | Any = "gmm",
    model_options: Mapping[str, Any] | None = None,
    solver: str = "euler",
    solver_options: Mapping[str, Any] | None = None,
    schedule: str | None = None,
    schedule_options: Mapping[str, Any] | None = None,
    num_steps: int = 19,
    seeds: Sequence[int] = tuple(range(16)),
    dtype: str = "auto",
    device: str = "cpu",
    batch: int = 64,
    afs: bool = False,
    labels: str | None = None,
) -> Setup:
    """Sample the trajectories of ``seeds`` (``num_steps`` sigmas: ``num_steps - 1`` steps).

    ``schedule=None`` takes the solver's recommended schedule (as ``diffsampler sample`` does).
    ``afs``: the analytical first step (Zhou et al. 2024), as ``diffsampler sample --afs``.
    ``labels``: class labels (or prompt numbers) per seed, as ``diffsampler sample --labels``
    (``random``, ``seed`` or a class index; None: the model's default, refused by models that
    cannot do without).
    """
    import torch

    from diffsampler.runs import check_labels, labels_for

    check_labels(None, None, labels)

    den = get_model(model, **dict(model_options or {})) if isinstance(model, str) else model
    sol = get_solver(solver, **dict(solver_options or {}))
    if schedule is None:
        schedule, recommended = getattr(sol, "recommended_schedule", ("polynomial", {"rho": 7.0}))
        sched_opts = {**recommended, **dict(schedule_options or {})}
    else:
        sched_opts = dict(schedule_options or {})
    sched = get_schedule(schedule, **sched_opts)
    steps = resolve_num_steps(sol, num_steps=num_steps)
    sigmas = sched.sigmas(steps, den.sigma_min, den.sigma_max, denoiser=den)
    if dtype == "auto":
        dtype = default_dtype(den)
    if dtype not in _DTYPES:
        raise OptionError(f"dtype must be one of {', '.join(_DTYPES)} or auto, got {dtype!r}")
    if batch < 1:
        raise OptionError(f"batch must be >= 1, got {batch}")
    device = resolve_device(device)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise OptionError("no seeds given")
    name = model if isinstance(model, str) else type(model).__name__
    per_seed = labels_for(labels, den, seeds, model_name=name)  # refused before any sampling
    cond = None if per_seed is None else torch.tensor(per_seed, device=device)
    if hasattr(den, "to") and device != "cpu":
        den = den.to(device)
    parts, nfe = [], 0
    for start in range(0, len(seeds), batch):
        chunk = seeds[start : start + batch]
        noise = seed_noise(chunk, den.shape, dtype=getattr(torch, dtype), device=device)
        part_cond = None if cond is None else cond[start : start + batch]
        result = sol.sample(den, noise * float(sigmas[0]), sigmas, cond=part_cond, afs=afs,
                            return_trajectory=True)
        parts.append(result.trajectory)
        nfe = result.nfe
    trajectory = torch.cat(parts, dim=1)
    config = {
        "model": model if isinstance(model, str) else type(model).__name__,
        "model_options": dict(model_options or {}),
        "model_spec": getattr(den, "spec", None),
        "model_shape": list(den.shape),
        "solver": solver,
        "solver_options": options_as_dict(getattr(sol, "options", None)) or {},
        "schedule": schedule,
        "schedule_options": options_as_dict(getattr(sched, "options", None)) or sched_opts,
        "num_steps": steps,
        "afs": afs,
        "nfe": nfe,
        "sigmas": [float(s) for s in sigmas],
        "seeds": list(seeds),
        "labels": labels,
        "dtype": dtype,
        "device": device,
    }
    return Setup(
        model=den, solver=sol, sigmas=np.asarray(sigmas, dtype=np.float64), seeds=seeds,
        trajectory=trajectory, nfe=nfe, config=config, cond=cond,
    )
