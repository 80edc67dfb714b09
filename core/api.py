"""The public functions: look components up by name and sample with them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError, OptionError, UnknownComponentError
from .protocols import Denoiser, SampleResult, Schedule, Solver, StepCallback
from .registry import Component, Kind, get_registry
from .schedule import SigmaList
from .solver import steps_for_nfe

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "get_distiller",
    "get_metric",
    "get_model",
    "get_schedule",
    "get_solver",
    "list_components",
    "resolve_num_steps",
    "sample",
]


def get_solver(name: str, **options: Any) -> Solver:
    """A registered solver, e.g. ``get_solver("ipndm", max_order=4)``."""
    return get_registry().create("solver", name, **options)


def get_schedule(name: str, **options: Any) -> Schedule:
    """A registered time schedule, e.g. ``get_schedule("polynomial", rho=7)``."""
    return get_registry().create("schedule", name, **options)


def get_metric(name: str, **options: Any) -> Any:
    """A registered metric."""
    return get_registry().create("metric", name, **options)


def get_distiller(name: str, **options: Any) -> Any:
    """A registered distiller (GITS, AMED, SFD, ...)."""
    return get_registry().create("distiller", name, **options)


# suffixes that make an unknown model name a missing file rather than a mistyped name
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".pt", ".pth", ".pkl", ".ckpt", ".bin", ".npz", ".zip")


def file_loaders(path: Path) -> list[Component]:
    """The registered models whose factory's ``loads_file(path)`` accepts ``path``."""
    out = []
    for component in get_registry().components("model"):
        probe = getattr(component.factory, "loads_file", None)
        if probe is not None and probe(path):
            out.append(component)
    return out


def get_model(name: str | os.PathLike[str], **options: Any) -> Denoiser:
    """A registered model by name, or a model file that a model plugin can load.

    For a path, the model plugins whose factory has a ``loads_file(path)`` predicate are asked;
    the one that accepts it is called with ``path=...`` and ``options``. A factory's
    ``file_format`` (one line) describes what it reads, for the error when none accepts a file.
    """
    registry = get_registry()
    text = os.fspath(name)
    options = _checked_device(options)
    try:
        return registry.create("model", text, **options)
    except UnknownComponentError:
        path = Path(text)
        if not path.exists():
            if os.sep in text or path.suffix.lower() in _MODEL_FILE_SUFFIXES:
                raise ModelLoadError(f"model file {text!r} does not exist") from None
            raise
    loaders = file_loaders(path)
    if not loaders:
        described = ((c.name, getattr(c.factory, "file_format", None)) for c in get_registry().components("model"))
        formats = "; ".join(f"{name}: {what}" for name, what in described if what)
        raise ModelLoadError(
            f"no installed model plugin can load {text!r}" + (f". Model files they read: {formats}" if formats else "")
        )
    if len(loaders) > 1:
        names = ", ".join(c.qualified_name for c in loaders)
        raise ModelLoadError(f"several model plugins can load {text!r}: {names}; pick one by name")
    return loaders[0].create(path=text, **options)


def _checked_device(options: dict[str, Any]) -> dict[str, Any]:
    """A model option ``device`` checked as ``--device`` is (``auto`` resolved; a missing GPU is
    one line, not a torch assertion inside the model's first tensor)."""
    device = options.get("device")
    if not isinstance(device, str):
        return options
    from .devices import resolve_device

    return {**options, "device": resolve_device(device, flag="--model-opt device")}


def list_components(kind: Kind | None = None) -> list[dict[str, str]]:
    """Every registered component: kind, name, plugin, distribution, version, summary."""
    return [
        {
            "kind": c.kind,
            "name": c.name,
            "plugin": c.plugin,
            "distribution": c.distribution,
            "version": c.version,
            "summary": c.summary,
        }
        for c in get_registry().components(kind)
    ]


def resolve_num_steps(
    solver: Solver,
    *,
    num_steps: int | None = None,
    nfe: int | None = None,
    afs: bool = False,
    denoise_to_zero: bool = False,
) -> int:
    """``num_steps`` from either itself or an NFE budget (exactly one must be given)."""
    if (num_steps is None) == (nfe is None):
        raise OptionError("give exactly one of num_steps (steps + 1 sigmas) or nfe")
    if nfe is not None:
        return steps_for_nfe(solver, nfe, afs=afs, denoise_to_zero=denoise_to_zero)
    assert num_steps is not None
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise OptionError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    return num_steps


def sample(
    noise: Tensor,
    *,
    model: Denoiser | str = "gmm",
    solver: Solver | str = "euler",
    schedule: Schedule | str | None = None,
    num_steps: int | None = None,
    nfe: int | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    cond: Any = None,
    afs: bool = False,
    denoise_to_zero: bool = False,
    return_trajectory: bool = False,
    callback: StepCallback | None = None,
    solver_options: Mapping[str, Any] | None = None,
    schedule_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
) -> SampleResult:
    """Unit noise in, samples out.

    ``noise`` is ``[batch, *model.shape]`` unit Gaussian noise; it is scaled by the first sigma.
    Components are objects or registered names (with ``*_options``). Give ``sigmas`` directly,
    or ``num_steps`` or ``nfe`` for the schedule; without ``schedule`` the solver's
    ``recommended_schedule`` is used (with ``schedule_options`` on top), as ``diffsampler sample``
    does.
    """
    den = get_model(model, **(model_options or {})) if isinstance(model, str) else model
    sol = get_solver(solver, **(solver_options or {})) if isinstance(solver, str) else solver
    if sigmas is not None:
        if num_steps is not None or nfe is not None:
            raise OptionError("give either sigmas or num_steps/nfe, not both")
        sched: Schedule = SigmaList(sigmas)
        steps = len(sched.values)  # type: ignore[attr-defined]
    else:
        if schedule is None:
            name, recommended = getattr(sol, "recommended_schedule", ("polynomial", {"rho": 7.0}))
            sched = get_schedule(name, **{**recommended, **(schedule_options or {})})
        elif isinstance(schedule, str):
            sched = get_schedule(schedule, **(schedule_options or {}))
        else:
            sched = schedule
        steps = resolve_num_steps(
            sol, num_steps=num_steps, nfe=nfe, afs=afs, denoise_to_zero=denoise_to_zero
        )
    levels = sched.sigmas(
        steps,
        den.sigma_min if sigma_min is None else sigma_min,
        den.sigma_max if sigma_max is None else sigma_max,
        denoiser=den,
    )
    x = noise * float(levels[0])
    return sol.sample(
        den,
        x,
        levels,
        cond=cond,
        afs=afs,
        denoise_to_zero=denoise_to_zero,
        return_trajectory=return_trajectory,
        callback=callback,
    )
