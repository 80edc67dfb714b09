"""The GITS distiller: teacher trajectories -> cost matrix -> dynamic programming (-> AFS step).

Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling" (ICML 2024,
arXiv:2405.11326), Sec. 5; the seed's ``gits-main/gits_utils.py:get_dp_list``. Differences from
the seed, all deliberate: the warm-up noise is per seed (``seed_noise``), every entry of the cost
matrix is the exact mean over all ``num_warmup`` trajectories (the seed averages per-round means
over ``num_warmup // (batch + 1) + 1`` rounds of a full batch), the teacher never uses AFS (the seed
hands the student's ``afs`` flag to the teacher too), and the AFS search scores candidates on the
first ``afs_samples`` warm-up trajectories (the seed: on the last round's batch). Class labels,
as the seed's, are random for a class-conditional model (option ``labels``), but drawn per seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from diffsampler import build_options, describe_options
from diffsampler.errors import OptionError
from diffsampler.options import options_as_dict, parse_inline

from .artifact import PAPER, GITSSchedule, load_schedule
from .dp import dp_table, path_cost
from .options import GITSOptions

__all__ = ["GITS", "STAGES", "SearchResult"]

#: Progress events are ``{"stage": STAGES.index(name), "done": k, "total": n}``.
STAGES = ("teacher", "cost", "dp", "afs")
Progress = Callable[[Mapping[str, float]], None]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _jsonable(value: Any) -> Any:
    import json

    try:
        return json.loads(json.dumps(value))  # tuples become lists, as the file will hold
    except (TypeError, ValueError):
        return repr(value)


def model_identity(model: Any, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What names the model a schedule was searched for (given ``info`` wins)."""
    out: dict[str, Any] = {
        "class": type(model).__name__,
        "repr": repr(model)[:300],
        "shape": list(getattr(model, "shape", ())),
        "sigma_min": float(model.sigma_min),
        "sigma_max": float(model.sigma_max),
    }
    for key in ("name", "spec"):
        if getattr(model, key, None) is not None:
            out[key] = _jsonable(getattr(model, key))
    out.update({k: _jsonable(v) for k, v in (info or {}).items()})
    return out


@attrs.frozen(kw_only=True)
class SearchResult:
    """The outcome of the expensive part: the mean cost matrix over the teacher's grid.

    It does not depend on ``coeff`` or ``num_steps``: :meth:`GITS.schedule` runs the (cheap) DP
    on it for any of them. ``endpoints`` are this process's teacher end points, per batch, kept
    for the AFS search.
    """

    cost: np.ndarray
    teacher_sigmas: tuple[float, ...]
    num_warmup: int
    teacher_nfe: int
    extra_nfe: int
    seconds: dict[str, float]
    model: dict[str, Any]
    batches: tuple[Any, ...]
    endpoints: tuple[Any, ...] = attrs.field(repr=False)
    #: the labels choice the trajectories were made with (``none``, ``random``, ... or ``cond``)
    labels: str = "none"
    #: their conditioning (``None`` or a callable of seeds), reused by the AFS search
    cond: Any = attrs.field(default=None, repr=False, eq=False)


class GITS:
    """GITS: search a time schedule for a model from its teacher trajectories (DP over a grid)."""

    Options = GITSOptions
    paper = PAPER

    def __init__(self, **options: Any) -> None:
        self.options: GITSOptions = build_options(GITSOptions, options, owner="distiller 'gits'")

    def __repr__(self) -> str:
        return f"GITS({self.options!r})"

    # -- components ----------------------------------------------------------------------
    def _device(self) -> str:
        from diffsampler.distributed import device_for_rank

        return device_for_rank(self.options.device)

    def _dtype(self) -> Any:
        import torch

        return getattr(torch, self.options.dtype)

    def teacher_solver(self) -> Any:
        import diffsampler as ds

        o = self.options
        return ds.get_solver(o.teacher, **parse_inline(o.teacher_options, "teacher_options"))

    def student_solver(self) -> Any:
        import diffsampler as ds

        o = self.options
        return ds.get_solver(o.solver, **parse_inline(o.solver_options, "solver_options"))

    def teacher_sigmas(self, model: Any) -> tuple[float, ...]:
        import diffsampler as ds

        o = self.options
        known = {x.name for x in describe_options(ds.get_registry().get("schedule", o.teacher_schedule).options)}
        extra = {"rho": o.teacher_rho} if "rho" in known else {}
        sched = ds.get_schedule(o.teacher_schedule, **extra)
        values = sched.sigmas(o.teacher_steps, model.sigma_min, model.sigma_max, denoiser=model)
        return tuple(float(v) for v in values)

    def settings(self) -> dict[str, Any]:
        return options_as_dict(self.options)

    # -- the search ----------------------------------------------------------------------
    def search(
        self,
        teacher: Any,
        *,
        cond: Any = None,
        progress: Progress | None = None,
        model_info: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        """Teacher trajectories and the mean cost matrix (``num_warmup`` trajectories, sharded
        over ``torchrun`` processes and summed with ``all_reduce_sum``).

        ``cond``: ``None`` (the option ``labels`` decides: by default a random class per seed
        for a class-conditional model, as the seed), one conditioning for every trajectory, or a
        callable ``cond(seeds) -> conditioning`` for a batch's seeds.
        """
        import torch

        from diffsampler.distributed import all_reduce_sum, shard
        from diffsampler.labels import labels_cond
        from diffsampler.seeds import plan_batches, seed_noise

        from .cost import cost_sums
        from .teacher import teacher_batch

        o = self.options
        device, dtype = self._device(), self._dtype()
        name = str((model_info or {}).get("name") or getattr(teacher, "name", None) or type(teacher).__name__)
        cond, labels = labels_cond(o.labels, teacher, model_name=name, device=device, first_seed=o.seed,
                                   cond=cond)
        solver = self.teacher_solver()
        sigmas = self.teacher_sigmas(teacher)
        if o.num_steps > o.teacher_steps:
            raise OptionError(
                f"num_steps={o.num_steps} exceeds teacher_steps={o.teacher_steps}: GITS chooses "
                "its sigmas among the teacher's"
            )
        mine = shard(plan_batches(range(o.seed, o.seed + o.num_warmup), o.batch))
        total = torch.zeros((len(sigmas), len(sigmas)), dtype=torch.float64, device=device)
        t_teacher = t_cost = 0.0
        teacher_nfe = extra_nfe = 0
        endpoints = []
        done = 0
        for batch in mine:
            _sync(device)
            t0 = time.perf_counter()
            noise = seed_noise(batch.seeds, teacher.shape, dtype=dtype, device=device)
            c = cond(batch.seeds) if callable(cond) else cond
            tb = teacher_batch(solver, teacher, noise, sigmas, cond=c)
            _sync(device)
            t1 = time.perf_counter()
            total += cost_sums(tb.points, tb.derivs, list(sigmas), o.metric)
            _sync(device)
            t2 = time.perf_counter()
            t_teacher += t1 - t0
            t_cost += t2 - t1
            teacher_nfe, extra_nfe = tb.nfe, tb.extra_nfe
            endpoints.append(tb.points[-1])
            done += len(batch.seeds)
            if progress is not None:
                progress({"stage": 0, "done": done, "total": o.num_warmup})
                progress({"stage": 1, "done": done, "total": o.num_warmup})
        all_reduce_sum(total)
        cost = (total / o.num_warmup).cpu().numpy()
        return SearchResult(
            cost=cost, teacher_sigmas=sigmas, num_warmup=o.num_warmup, teacher_nfe=teacher_nfe,
            extra_nfe=extra_nfe, seconds={"teacher": t_teacher, "cost": t_cost},
            model=model_identity(teacher, model_info), batches=tuple(mine),
            endpoints=tuple(endpoints), labels=labels, cond=cond,
        )

    def schedule(
        self,
        result: SearchResult,
        *,
        teacher: Any = None,
        coeff: float | None = None,
        num_steps: int | None = None,
        cond: Any = None,
        progress: Progress | None = None,
    ) -> GITSSchedule:
        """The DP on ``result`` for ``coeff`` and ``num_steps`` (default: the options'), then,
        with ``afs``, the best extra first step (needs ``teacher``, the model; sampled with the
        search's labels unless ``cond`` is given)."""
        o = self.options
        coeff = o.coeff if coeff is None else float(coeff)
        num_steps = o.num_steps if num_steps is None else int(num_steps)
        t0 = time.perf_counter()
        table = dp_table(result.cost, num_steps, coeff)
        path = table.path(num_steps)
        t_dp = time.perf_counter() - t0
        if progress is not None:
            progress({"stage": 2, "done": 1, "total": 1})
        costs: dict[str, Any] = {
            "dp_objective": table.cost(num_steps),
            "teacher_seconds": result.seconds["teacher"],
            "cost_matrix_seconds": result.seconds["cost"],
            "dp_seconds": t_dp,
            "teacher_nfe_per_trajectory": result.teacher_nfe,
            "teacher_extra_nfe_per_trajectory": result.extra_nfe,
        }
        if o.afs:
            if teacher is None:
                raise OptionError("the AFS search samples with the model: pass teacher=")
            path, afs_info = self._afs(result, path, teacher, result.cond if cond is None else cond, progress)
            costs.update(afs_info)
        sigmas = tuple(result.teacher_sigmas[i] for i in path)
        settings = {**self.settings(), "labels": result.labels, "coeff": coeff, "num_steps": num_steps,
                    "teacher_sigmas": list(result.teacher_sigmas)}
        return GITSSchedule(
            sigmas=sigmas, indices=tuple(path), afs=o.afs, settings=settings, model=result.model,
            costs=costs,
        )

    def _afs(
        self, result: SearchResult, path: list[int], teacher: Any, cond: Any,
        progress: Progress | None,
    ) -> tuple[list[int], dict[str, Any]]:
        """The seed's AFS step: try every teacher point between the first two chosen ones as an
        extra first step (sampled with AFS, so the NFE is unchanged) and keep the one whose
        samples land nearest the teacher's (mean L2 distance)."""
        import torch

        from diffsampler.distributed import all_reduce_sum
        from diffsampler.seeds import seed_noise

        if path[1] < 2:
            raise OptionError(
                "AFS needs a teacher point between the first two searched ones, but they are "
                "neighbours on the teacher grid: raise teacher_steps"
            )
        device, dtype = self._device(), self._dtype()
        student = self.student_solver()
        t0 = time.perf_counter()
        best, best_path, scores = float("inf"), path, {}
        o = self.options
        scored = o.num_warmup if o.afs_samples == 0 else min(o.afs_samples, o.num_warmup)
        limit = o.seed + scored  # the first `scored` warm-up seeds, whatever the sharding
        candidates = range(1, path[1])
        for n_done, k in enumerate(candidates, 1):
            trial = [0, k, *path[1:]]
            levels = [result.teacher_sigmas[i] for i in trial]
            total = torch.zeros((), dtype=torch.float64, device=device)
            for batch, end in zip(result.batches, result.endpoints, strict=True):
                keep = [r for r, sd in enumerate(batch.seeds) if sd < limit]
                if not keep:
                    continue
                seeds = [batch.seeds[r] for r in keep]
                noise = seed_noise(seeds, teacher.shape, dtype=dtype, device=device)
                c = cond(tuple(seeds)) if callable(cond) else cond
                x = student.sample(teacher, noise * levels[0], levels, cond=c, afs=True).x
                diff = (x - end[keep]).reshape(x.shape[0], -1)
                total += torch.linalg.vector_norm(diff, dim=1).double().sum()
            all_reduce_sum(total)
            score = float(total) / scored
            scores[str(k)] = score
            if score < best:  # strict: the first best, as the seed
                best, best_path = score, trial
            if progress is not None:
                progress({"stage": 3, "done": n_done, "total": len(candidates)})
        _sync(device)
        return best_path, {
            "afs_seconds": time.perf_counter() - t0,
            "afs_l2_by_index": scores,
            "afs_l2": best,
            "afs_samples": scored,
        }

    # -- the Distiller protocol ----------------------------------------------------------
    def distill(
        self,
        teacher: Any,
        *,
        progress: Progress | None = None,
        cond: Any = None,
        model_info: Mapping[str, Any] | None = None,
    ) -> GITSSchedule:
        """Search and return the schedule for the options' ``num_steps`` and ``coeff``."""
        result = self.search(teacher, cond=cond, progress=progress, model_info=model_info)
        return self.schedule(result, teacher=teacher, cond=cond, progress=progress)

    def load(self, path: Any) -> GITSSchedule:
        return load_schedule(path)


def objective(schedule: GITSSchedule, result: SearchResult) -> float:
    """The DP objective of a schedule's teacher indices (AFS point excluded)."""
    path = list(schedule.indices)
    if schedule.afs:
        path = [path[0], *path[2:]]
    return path_cost(result.cost, path, float(schedule.settings["coeff"]))
