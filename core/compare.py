"""Compare solvers side by side: a grid of solver (x schedule) x NFE, one quality number per cell.

The seed's central table ("FID per NFE for every solver"), made exact where it can be: on
analytic models (``gmm``, ``empirical``) the default metrics are the error to the exact ODE
endpoint and the Frechet distance to the data's true moments; on any model, any registered metric
can be named. :func:`run_compare` is deterministic: the same configuration gives the same numbers,
bit for bit, on the same machine.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .api import get_metric, get_model, get_schedule, get_solver
from .errors import OptionError, UnreachableNFEError
from .options import from_record, options_as_dict, parse_inline
from .protocols import Analytic, ChecksRun, Decodable, SamplesItself
from .runs import check_labels, labels_for
from .seeds import plan_batches, seed_noise
from .sigmas import sigma_tuple
from .solver import steps_for_nfe

__all__ = [
    "DEFAULT_SOLVERS",
    "Cell",
    "CompareConfig",
    "CompareInterrupted",
    "CompareResult",
    "SolverSpec",
    "parse_metric",
    "parse_nfes",
    "run_compare",
]

_SPEC = re.compile(r"^\s*(?P<name>[^\[\]@\s]+)\s*(\[(?P<opts>[^\]]*)\])?\s*(@(?P<sched>[^\[\]\s]+)(\[(?P<sopts>[^\]]*)\])?)?\s*$")


def _as_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@attrs.frozen(kw_only=True)
class SolverSpec:
    """One row of the table: a solver with options, and optionally its schedule."""

    solver: str
    options: dict[str, Any] = attrs.field(factory=dict, converter=_as_dict)
    schedule: str | None = None
    schedule_options: dict[str, Any] = attrs.field(factory=dict, converter=_as_dict)

    @classmethod
    def parse(cls, text: str) -> SolverSpec:
        """``ipndm``, ``ipndm[max_order=3]``, ``dpmpp[max_order=2]@logsnr``, ``deis@time_uniform[rho=2]``."""
        match = _SPEC.match(text)
        if not match:
            raise OptionError(
                f"bad solver spec {text!r}: expected NAME, NAME[key=value,...] or "
                "NAME[...]@SCHEDULE[key=value,...]"
            )
        return cls(
            solver=match["name"], options=parse_inline(match["opts"], text),
            schedule=match["sched"], schedule_options=parse_inline(match["sopts"], text),
        )

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        text = f"{self.solver}[{opts}]" if opts else self.solver
        if self.schedule:
            sopts = ",".join(f"{k}={v}" for k, v in self.schedule_options.items())
            text += f"@{self.schedule}" + (f"[{sopts}]" if sopts else "")
        return text


# The seed README's table: each solver with the options and schedule it reports.
DEFAULT_SOLVERS: tuple[SolverSpec, ...] = (
    SolverSpec(solver="euler"),
    SolverSpec(solver="heun"),
    SolverSpec(solver="dpm"),
    SolverSpec(solver="dpmpp", options={"max_order": 3}),
    SolverSpec(solver="unipc", options={"max_order": 3}),
    SolverSpec(solver="deis", options={"max_order": 3}),
    SolverSpec(solver="ipndm", options={"max_order": 4}),
    SolverSpec(solver="ipndm_v", options={"max_order": 4}),
)


_METRIC = re.compile(r"^\s*(?P<name>[^\[\]\s]+)\s*(\[(?P<opts>[^\]]*)\])?\s*$")


def parse_metric(text: str) -> tuple[str, dict[str, str]]:
    """``fid`` or ``fid[ref=stats.npz,device=cuda]`` into a name and its options."""
    match = _METRIC.match(text)
    if not match:
        raise OptionError(f"bad metric spec {text!r}: expected NAME or NAME[key=value,...]")
    return match["name"], parse_inline(match["opts"], text)


def parse_nfes(text: str) -> tuple[int, ...]:
    """``"3-10"`` or ``"3,5,8"`` (or both) into a sorted tuple of distinct NFEs."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise OptionError(f"bad NFE list {text!r}: expected e.g. 3-10 or 4,6,8") from None
        if last < first:
            raise OptionError(f"bad NFE list {text!r}: in {part!r} the end is below the start")
        out.update(range(first, last + 1))
    if not out or min(out) < 1:
        raise OptionError(f"bad NFE list {text!r}: NFEs are positive integers")
    return tuple(sorted(out))


def _specs(value: Sequence[SolverSpec | Mapping[str, Any] | str]) -> tuple[SolverSpec, ...]:
    out = []
    for v in value:
        if isinstance(v, SolverSpec):
            out.append(v)
        elif isinstance(v, str):
            out.append(SolverSpec.parse(v))
        else:
            out.append(SolverSpec(**v))
    return tuple(out)


@attrs.frozen(kw_only=True)
class CompareConfig:
    """Everything that determines a comparison; saved with its results."""

    model: str = "gmm"
    model_options: dict[str, Any] = attrs.field(factory=dict, converter=_as_dict)
    solvers: tuple[SolverSpec, ...] = attrs.field(default=DEFAULT_SOLVERS, converter=_specs)
    schedules: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    nfes: tuple[int, ...] = attrs.field(default=tuple(range(3, 11)), converter=tuple)
    seeds: tuple[int, ...] = attrs.field(default=tuple(range(64)), converter=tuple)
    metrics: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    afs: bool = False
    dtype: str = "float64"
    batch: int = 64
    #: class labels (or prompt indices) per seed, as ``sample --labels``: None (the model's
    #: default), "random", "seed" or one class index
    labels: str | None = attrs.field(
        default=None, converter=lambda v: None if v is None else str(v), validator=check_labels
    )

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=True)
        for key in ("schedules", "nfes", "seeds", "metrics"):
            data[key] = list(data[key])
        data["solvers"] = [attrs.asdict(s) for s in self.solvers]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareConfig:
        return from_record(cls, data, what="compare configuration")


@attrs.frozen(kw_only=True)
class Cell:
    """One cell: a row (solver spec, schedule) at one NFE; ``values`` is None when unreachable."""

    row: str
    nfe: int
    num_steps: int | None
    values: dict[str, float] | None
    seconds: float


@attrs.frozen(kw_only=True)
class CompareResult:
    config: CompareConfig
    rows: tuple[str, ...]
    cells: tuple[Cell, ...]
    reference: dict[str, float] | None  # metrics of the exact endpoints (analytic models)
    ground_truth_accuracy: float | None
    seconds: float
    model_spec: dict[str, Any] | None = None  # the exact problem (analytic models)
    complete: bool = True  # False: interrupted, only the cells finished before that
    higher_is_better: tuple[str, ...] = ()  # the keys whose metric declares higher_is_better

    def value(self, row: str, nfe: int, key: str) -> float | None:
        for cell in self.cells:
            if cell.row == row and cell.nfe == nfe:
                return None if cell.values is None else cell.values.get(key)
        return None

    def keys(self) -> list[str]:
        seen: list[str] = []
        for cell in self.cells:
            for key in cell.values or {}:
                if key not in seen:
                    seen.append(key)
        return seen

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "rows": list(self.rows),
            "cells": [attrs.asdict(c) for c in self.cells],
            "reference": self.reference,
            "ground_truth_accuracy": self.ground_truth_accuracy,
            "seconds": self.seconds,
            "model_spec": self.model_spec,
            "complete": self.complete,
            "higher_is_better": list(self.higher_is_better),
        }

    def best(self, nfe: int, key: str) -> float | None:
        """The best value of ``key`` at ``nfe`` over the rows (the largest where higher is better)."""
        values = [v for row in self.rows if (v := self.value(row, nfe, key)) is not None]
        if not values:
            return None
        return max(values) if key in self.higher_is_better else min(values)


def _rows(config: CompareConfig) -> list[SolverSpec]:
    if not config.schedules:
        return list(config.solvers)
    return [
        attrs.evolve(spec, schedule=name, schedule_options={})
        for spec in config.solvers
        for name in config.schedules
    ]


def _warn_other_labels(label: str, parts: Sequence[Any], chosen: str | None) -> None:
    """Warn when a learned row (an AMED predictor, a GITS file, an SFD student) was made with class
    labels other than the comparison's: its cells then measure it off its training."""
    for part in parts:
        own = part.sampling_defaults.get("labels") if isinstance(part, SamplesItself) else None
        if own is not None and own != chosen:
            now = "without labels" if chosen is None else f"with --labels {chosen}"
            warnings.warn(f"row {label} was trained with labels={own}; this comparison samples {now} "
                          f"(--labels {own} samples it as trained)", stacklevel=3)
            return


def finished_cells(saved: Mapping[str, Any], config: CompareConfig) -> list[Cell]:
    """The measured cells of an interrupted comparison's ``results.json`` data when it was made
    with exactly ``config`` (else none): what a rerun into the same folder keeps."""
    try:
        same = not saved.get("complete", True) and CompareConfig.from_dict(saved["config"]).to_dict() == config.to_dict()
        cells = [Cell(**cell) for cell in saved.get("cells", ())] if same else []
    except (OptionError, KeyError, TypeError, ValueError, AttributeError):  # another version's, edited by hand
        return []
    if not all(_well_formed(cell) for cell in cells):
        return []
    return [cell for cell in cells if cell.values is not None]


def _well_formed(cell: Cell) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    return (isinstance(cell.row, str) and isinstance(cell.nfe, int) and not isinstance(cell.nfe, bool)
            and (cell.values is None or (isinstance(cell.values, dict)
                                         and all(isinstance(k, str) and number(v) for k, v in cell.values.items())))
            and number(cell.seconds))


def run_compare(
    config: CompareConfig,
    *,
    on_cell: Callable[[Cell], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    finished: Sequence[Cell] = (),
    finished_higher: Sequence[str] = (),
) -> CompareResult:
    """Evaluate every (row, NFE) cell of ``config``; ``on_cell`` reports progress. Cells in
    ``finished`` (:func:`finished_cells` of an interrupted run; ``finished_higher``: its
    higher-is-better keys) are kept as they are instead of being measured again."""
    import torch

    started = time.perf_counter()
    model = get_model(config.model, **config.model_options)
    analytic = isinstance(model, Analytic)
    metric_names = config.metrics or (("l2-exact", "fd-exact") if analytic else ())
    if not metric_names:
        raise OptionError(
            f"model {config.model!r} is not analytic: name a metric with --metric (see: diffsampler list metrics)"
        )
    metrics = [get_metric(name, **opts) for name, opts in map(parse_metric, metric_names)]
    if config.dtype not in ("float32", "float64"):
        raise OptionError(f"dtype must be float32 or float64, got {config.dtype!r}")
    dtype = getattr(torch, config.dtype)
    classes = labels_for(config.labels, model, config.seeds, model_name=config.model)  # refused early
    for metric in metrics:  # e.g. PRDC's k against the number of samples, before any sampling
        check_run = getattr(metric, "check_run", None)
        if callable(check_run):
            check_run(seeds=config.seeds, labels=classes)

    rows = _rows(config)
    built: list[tuple[SolverSpec, Any, str, Any]] = []
    for spec in rows:
        solver = get_solver(spec.solver, **spec.options)
        name, recommended = getattr(solver, "recommended_schedule", ("polynomial", {"rho": 7.0}))
        if spec.schedule is not None:
            name, recommended = spec.schedule, spec.schedule_options
        built.append((spec, solver, name, get_schedule(name, **recommended)))
    labels = [_row_label(spec, name, schedule, _short) for spec, _, name, schedule in built]
    if len(set(labels)) < len(labels):  # two files of the same name: show the paths as given
        labels = [_row_label(spec, name, schedule, str) for spec, _, name, schedule in built]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise OptionError(f"the comparison has the row {twice[0]!r} twice; give each solver/schedule once")
    for (_, solver, _, schedule), label in zip(built, labels, strict=True):
        _warn_other_labels(label, (solver, schedule), config.labels)
    # (row label, solver, per NFE: sigmas or None where the row cannot reach that NFE)
    plans: list[tuple[str, Any, list[Any]]] = []
    for (_, solver, _, schedule), label in zip(built, labels, strict=True):
        row_sigmas: list[Any] = []
        refusal: OptionError | None = None
        for nfe in config.nfes:
            try:
                num_steps = steps_for_nfe(solver, nfe, afs=config.afs)
            except UnreachableNFEError:  # this solver's NFE per step cannot make ``nfe``
                row_sigmas.append(None)
                continue
            except OptionError as error:  # e.g. a learned solver's file made for the other AFS
                row_sigmas.append(None)
                refusal = refusal or error
                continue
            try:
                # a searched (GITS) schedule or a learned solver may fit some step counts only
                sigmas = schedule.sigmas(num_steps, model.sigma_min, model.sigma_max, denoiser=model)
                for part in (schedule, solver):
                    if isinstance(part, ChecksRun):
                        part.check(model, sigma_tuple(sigmas), afs=config.afs)
            except OptionError as error:
                row_sigmas.append(None)
                refusal = refusal or error
            else:
                row_sigmas.append(sigmas)
        if refusal is not None and all(c is None for c in row_sigmas):
            raise OptionError(f"{label}: no NFE of {', '.join(map(str, config.nfes))} can run: {refusal}")
        plans.append((label, solver, row_sigmas))
    for k, nfe in enumerate(config.nfes):
        if all(p[2][k] is None for p in plans):
            raise OptionError(f"NFE {nfe} is not reachable by any solver in the comparison")
    kept = {(cell.row, cell.nfe): cell for cell in finished}
    if on_start is not None:
        on_start(sum(1 for p in plans for nfe, s in zip(config.nfes, p[2], strict=True)
                     if s is not None and (p[0], nfe) not in kept))

    batches = plan_batches(config.seeds, config.batch)
    noise = [seed_noise(b.seeds, model.shape, dtype=dtype) for b in batches]
    conds: list[Any] = [None] * len(batches)
    if classes is not None:
        by_seed = dict(zip(config.seeds, classes, strict=True))
        conds = [torch.tensor([by_seed[s] for s in b.seeds]) for b in batches]

    higher: dict[str, None] = dict.fromkeys(finished_higher)  # ordered set: keys where higher is better

    def measure(samples: list[Any]) -> dict[str, float]:
        values: dict[str, float] = {}
        for metric in metrics:
            paired = classes is not None and getattr(metric, "uses_labels", False)
            named = metric.compute(samples, model=model, seeds=config.seeds, **({"labels": classes} if paired else {}))
            if getattr(metric, "higher_is_better", False):
                higher.update(dict.fromkeys(named))
            values.update(named)
        return values

    reference, accuracy = None, None
    if analytic:
        from diffsampler.plugins.models.ground_truth import exact_endpoints

        truth = exact_endpoints(model, config.seeds)
        accuracy = truth.accuracy
        reference = measure([torch.from_numpy(truth.endpoints)])

    cells: list[Cell] = []

    def result(complete: bool) -> CompareResult:
        return CompareResult(
            config=config, rows=tuple(dict.fromkeys(c.row for c in cells)), cells=tuple(cells),
            reference=reference, ground_truth_accuracy=accuracy, complete=complete, higher_is_better=tuple(higher),
            seconds=time.perf_counter() - started, model_spec=getattr(model, "spec", None),
        )

    try:
        for row, solver, row_sigmas in plans:
            for nfe, sigmas in zip(config.nfes, row_sigmas, strict=True):
                if sigmas is None:
                    cells.append(Cell(row=row, nfe=nfe, num_steps=None, values=None, seconds=0.0))
                    continue
                if (row, nfe) in kept:
                    cells.append(kept[(row, nfe)])
                    continue
                t0 = time.perf_counter()
                first = float(sigmas[0])
                samples = [solver.sample(model, z * first, sigmas, cond=c, afs=config.afs).x
                           for z, c in zip(noise, conds, strict=True)]
                if isinstance(model, Decodable) and not analytic:  # image metrics see images
                    samples = [model.decode(x) for x in samples]
                cell = Cell(row=row, nfe=nfe, num_steps=len(sigmas), values=measure(samples),
                            seconds=time.perf_counter() - t0)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
    except KeyboardInterrupt as stop:
        raise CompareInterrupted(result(complete=False), signum=getattr(stop, "signum", 2)) from None
    return result(complete=True)


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_compare`; ``partial`` holds the cells finished before it."""

    def __init__(self, partial: CompareResult, *, signum: int = 2) -> None:
        super().__init__()
        self.partial = partial
        self.signum = signum  # SIGINT (Ctrl-C) or the signal the CLI turned into an interrupt


def _short(value: Any) -> str:
    """An option value for a row label: a file by its name, a float compactly."""
    if isinstance(value, float):
        return f"{value:g}"
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return os.path.basename(text) if os.sep in text else text


def _row_label(spec: SolverSpec, schedule_name: str, schedule: Any, show: Callable[[Any], str]) -> str:
    """``SOLVER[opts] @ SCHEDULE[opts]``; the schedule's options leave out a file the solver's
    already name (an SFD student's or AMED predictor's own schedule)."""
    solver_opts = ",".join(f"{k}={show(v)}" for k, v in spec.options.items())
    given = {os.path.abspath(v) for v in map(str, spec.options.values()) if os.sep in v or os.path.exists(v)}
    opts = options_as_dict(getattr(schedule, "options", None))
    shown = ",".join(
        f"{k}={show(v) if isinstance(v, str) else _short(v)}" for k, v in opts.items()
        if not (isinstance(v, str) and os.path.abspath(v) in given)
    )
    return (f"{spec.solver}[{solver_opts}]" if solver_opts else spec.solver) + f" @ {schedule_name}" + (
        f"[{shown}]" if shown else ""
    )
