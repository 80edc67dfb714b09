"""A sampling run: its configuration, its plan (components, sigmas, batches), its execution.

Planning and executing are kept apart: :func:`plan_run` resolves every component and splits the
seeds into batches without sampling anything; :func:`execute` samples the batches it is given
and hands each finished one to a callback, so callers decide what is kept (and a failure in
batch 7 loses nothing of batches 0-6).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from ._version import __version__
from .api import get_model, get_schedule, get_solver, resolve_num_steps
from .errors import OptionError, SamplingError
from .options import from_record, options_as_dict
from .protocols import ChecksRun, Compilable, Denoiser, SamplesItself, Solver
from .schedule import SigmaList
from .seeds import Batch, plan_batches, seed_noise
from .sigmas import sigma_tuple

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DEFAULT_NFE", "RunConfig", "RunPlan", "execute", "plan_run", "seed_labels", "with_model_defaults"]

_DTYPES = ("float32", "float64", "float16", "bfloat16")
_HALF = ("float16", "bfloat16")
#: the NFE of a run that names neither steps, NFE nor sigmas (and whose model has no own plan)
DEFAULT_NFE = 10


def _frozen_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def check_labels(_instance: Any, _attribute: Any, value: str | None) -> None:
    """attrs validator of a ``--labels`` choice."""
    if value is None or value in ("random", "seed"):
        return
    if not (isinstance(value, str) and value.isdigit()):
        raise OptionError(f"labels must be 'random', 'seed' or a class index, got {value!r}")


def _check_dtype(_instance: Any, _attribute: Any, value: str) -> None:
    if value not in _DTYPES:
        raise OptionError(f"dtype must be one of {', '.join(_DTYPES)}, got {value!r}")


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything that determines a run's samples; saved beside its outputs as JSON."""

    model: str = "gmm"
    model_options: dict[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    #: None: the model's own solver (:class:`~diffsampler.SamplesItself`), else euler
    solver: str | None = None
    solver_options: dict[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    schedule: str | None = None
    schedule_options: dict[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    num_steps: int | None = None
    nfe: int | None = None
    sigmas: tuple[float, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(float(s) for s in v)
    )
    #: None: the model's own choice with its own solver, else off
    afs: bool | None = None
    denoise_to_zero: bool = False
    seeds: tuple[int, ...] = attrs.field(default=tuple(range(64)), converter=tuple)
    batch: int = 64
    dtype: str = attrs.field(default="float32", validator=_check_dtype)
    device: str = "cpu"
    #: class labels of class-conditional models: None (the model's default), "random" (one per
    #: seed, drawn from that seed alone), "seed" (seed mod the number of classes: the seed-th
    #: prompt of a prompts file, as the seed's MS-COCO runs), or a class index for every sample
    labels: str | None = attrs.field(
        default=None, converter=lambda v: None if v is None else str(v), validator=check_labels
    )
    #: run the model through ``torch.compile`` (:class:`~diffsampler.Compilable` models)
    compile: bool = False
    #: capture each batch shape's whole sampling run in one CUDA graph and replay it
    cuda_graph: bool = False
    #: let cuDNN time its convolution algorithms (faster; not bit-reproducible on a GPU)
    cudnn_benchmark: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["seeds"] = list(self.seeds)
        data["sigmas"] = None if self.sigmas is None else list(self.sigmas)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        return from_record(cls, data, what="run configuration")


@attrs.frozen(kw_only=True)
class RunPlan:
    """A resolved run: components built, sigmas fixed, seeds split into batches."""

    config: RunConfig
    model: Denoiser = attrs.field(eq=False)
    solver: Solver = attrs.field(eq=False)
    schedule: str
    schedule_options: dict[str, Any]
    sigmas: Any  # float64 CPU tensor
    nfe: int
    batches: list[Batch]

    @property
    def evaluation_cost(self) -> int:
        """Network evaluations per denoiser call (2 with classifier-free guidance)."""
        info = getattr(self.model, "info", None)
        return int(info.get("nfe_per_evaluation", 1)) if isinstance(info, dict) else 1

    def record(self) -> dict[str, Any]:
        """The resolved configuration (every option made explicit), for ``config.json``."""
        import torch

        resolved = attrs.evolve(
            self.config,
            solver_options=options_as_dict(getattr(self.solver, "options", None))
            or self.config.solver_options,
            schedule=self.schedule,
            schedule_options=self.schedule_options,
            num_steps=None if self.config.sigmas is not None else len(self.sigmas),
            nfe=None,  # resolved into num_steps; the NFE spent is recorded beside the config
        )
        return {
            "diffsampler": __version__,
            "torch": torch.__version__,
            "config": resolved.to_dict(),
            "nfe": self.nfe,
            # a classifier-free-guided evaluation runs the network on a doubled batch: the seed
            # counts it as 2 NFE (model info "nfe_per_evaluation")
            "network_nfe": self.nfe * self.evaluation_cost,
            "sigmas": [float(s) for s in self.sigmas],
            "model_shape": list(self.model.shape),
            "model_spec": getattr(self.model, "spec", None),
        }


def seed_labels(plan: RunPlan, seeds: Iterable[int]) -> list[int] | None:
    """The class label of each seed of ``plan`` (None when the run has no labels)."""
    return labels_for(plan.config.labels, plan.model, seeds, model_name=plan.config.model)


def labels_for(choice: str | None, model: Denoiser, seeds: Iterable[int], *, model_name: str) -> list[int] | None:
    """The class label (or prompt index) of each seed for a ``--labels`` choice: ``None`` (the
    model's default: no labels), ``random``, ``seed`` or one class index.

    ``random`` draws from a generator of the seed alone (numpy ``default_rng([seed, 1])``), so a
    sample's label, like its noise, depends on its seed only.
    """
    import numpy as np

    from .protocols import ClassConditional

    check = getattr(model, "check_labels", None)
    if callable(check):  # the model's own words (prompts, classes) and the labels it cannot do without
        check(choice)
    if choice is None:
        return None
    classes = int(model.label_dim) if isinstance(model, ClassConditional) else 0
    if classes <= 0:
        raise OptionError(f"model {model_name!r} is not class-conditional: drop --labels")
    if choice == "random":
        return [int(np.random.default_rng([int(s), 1]).integers(classes)) for s in seeds]
    if choice == "seed":
        return [int(s) % classes for s in seeds]
    if int(choice) >= classes:
        raise OptionError(f"class {choice} is out of range: model {model_name!r} has {classes} (0-{classes - 1})")
    return [int(choice)] * len(list(seeds))


def with_model_defaults(config: RunConfig, model: Denoiser) -> RunConfig:
    """``config`` with what it leaves open filled in: from the model's own sampling plan
    (:class:`~diffsampler.SamplesItself`, e.g. a distilled student's solver, schedule, steps and
    AFS, and class labels whatever the solver) when the run uses the model's solver, else euler, the solver's schedule, no AFS and
    :data:`DEFAULT_NFE` evaluations."""
    own = dict(model.sampling_defaults) if isinstance(model, SamplesItself) else {}
    solver = config.solver or own.get("solver") or "euler"
    fits = own.get("solver") == solver  # a model's schedule and steps are made for its own solver
    updates: dict[str, Any] = {"solver": solver}
    if fits and config.solver is None:
        updates["solver_options"] = {**own.get("solver_options", {}), **config.solver_options}
    if config.afs is None:
        updates["afs"] = bool(own.get("afs", False)) if fits else False
    elif fits and "afs" in own and bool(own["afs"]) != config.afs:
        way = ("with", "without") if own["afs"] else ("without", "with")
        warnings.warn(f"the model was trained {way[0]} AFS; this run samples it {way[1]} AFS, off its training",
                      stacklevel=2)
    if fits and config.schedule is None and config.sigmas is None and "schedule" in own:
        updates["schedule"] = own["schedule"]
        updates["schedule_options"] = {**own.get("schedule_options", {}), **config.schedule_options}
    if config.labels is None and own.get("labels") is not None:
        updates["labels"] = str(own["labels"])
    if config.sigmas is None and config.num_steps is None and config.nfe is None:
        if fits and "num_steps" in own:
            updates["num_steps"] = int(own["num_steps"])
        else:
            updates["nfe"] = DEFAULT_NFE
    return attrs.evolve(config, **updates)


def with_learned_defaults(config: RunConfig, asked: RunConfig, part: Any) -> RunConfig:
    """``config`` with the step count, AFS and class labels the user left open (in ``asked``)
    taken from what a learned solver or schedule was made for (:class:`~diffsampler.SamplesItself`:
    an AMED predictor's, a GITS file's: trained on random classes, it samples random classes)."""
    own = dict(part.sampling_defaults) if isinstance(part, SamplesItself) else {}
    updates: dict[str, Any] = {}
    if asked.afs is None and "afs" in own:
        updates["afs"] = bool(own["afs"])
    if config.labels is None and own.get("labels") is not None:
        updates["labels"] = str(own["labels"])
    if asked.sigmas is None and asked.num_steps is None and asked.nfe is None and "num_steps" in own:
        updates.update(num_steps=int(own["num_steps"]), nfe=None)
    return attrs.evolve(config, **updates) if updates else config


def plan_run(config: RunConfig) -> RunPlan:
    """Resolve the components, the sigmas and the batches of ``config`` (samples nothing)."""
    if config.cuda_graph and not str(config.device).startswith("cuda"):
        raise OptionError(f"--cuda-graph needs a CUDA device; this run samples on {config.device}")
    model = get_model(config.model, **config.model_options)
    if config.compile:
        if not isinstance(model, Compilable):
            raise OptionError(f"model {config.model!r} cannot be compiled (it has no compiled() method): drop --compile")
        model = model.compiled()
    asked, config = config, with_model_defaults(config, model)
    assert config.solver is not None and config.afs is not None
    solver = get_solver(config.solver, **config.solver_options)
    config = with_learned_defaults(config, asked, solver)
    assert config.afs is not None
    schedule_options: dict[str, Any]
    if config.sigmas is not None:
        if config.num_steps is not None or config.nfe is not None:
            raise OptionError("give either explicit sigmas or steps/NFE, not both")
        sigmas = SigmaList(config.sigmas).sigmas(len(config.sigmas))
        schedule_name, schedule_options = "list", {"sigmas": list(config.sigmas)}
    else:
        if config.schedule is None:
            schedule_name, recommended = getattr(
                solver, "recommended_schedule", ("polynomial", {"rho": 7.0})
            )
            schedule_options = {**recommended, **config.schedule_options}
        else:
            schedule_name, schedule_options = config.schedule, dict(config.schedule_options)
        schedule = get_schedule(schedule_name, **schedule_options)
        schedule_options = options_as_dict(getattr(schedule, "options", None)) or schedule_options
        config = with_learned_defaults(config, asked, schedule)  # a searched (GITS) file's own count
        steps = resolve_num_steps(
            solver,
            num_steps=config.num_steps,
            nfe=config.nfe,
            afs=bool(config.afs),
            denoise_to_zero=config.denoise_to_zero,
        )
        sigmas = schedule.sigmas(steps, model.sigma_min, model.sigma_max, denoiser=model)
        if isinstance(schedule, ChecksRun):  # e.g. a GITS file searched with the other AFS setting
            schedule.check(model, sigma_tuple(sigmas), afs=bool(config.afs))
    assert config.afs is not None
    nfe = solver.nfe(len(sigmas), afs=config.afs, denoise_to_zero=config.denoise_to_zero)
    if isinstance(solver, ChecksRun):
        solver.check(model, sigma_tuple(sigmas), afs=config.afs)
    plan = RunPlan(
        config=config, model=model, solver=solver, schedule=schedule_name,
        schedule_options=schedule_options, sigmas=sigmas, nfe=nfe,
        batches=plan_batches(config.seeds, config.batch),
    )
    seed_labels(plan, config.seeds[:1])  # refuse bad labels before sampling anything
    return plan


def execute(
    plan: RunPlan,
    *,
    batches: Iterable[Batch] | None = None,
    on_batch: Callable[[Batch, Tensor], None],
    device: str | None = None,
    overlap: bool = True,
) -> None:
    """Sample ``batches`` (default: all of the plan) and pass each finished one to ``on_batch``.

    The samples handed over are in the model's output space (decoded for latent models), on
    the CPU, in float32, in order. ``device`` overrides the configured one (a rank's own GPU).
    With ``overlap`` (default) ``on_batch`` runs on a background thread while the next batch is
    sampled, fed on CUDA by pinned, non-blocking copies (:class:`~diffsampler.handoff.BatchHandoff`);
    every batch finished before a failure is still handed over.
    """
    import torch

    from .handoff import BatchHandoff
    from .protocols import Decodable
    from .tuning import cudnn_autotune

    dtype = getattr(torch, plan.config.dtype)
    target = torch.device(device or plan.config.device)
    first = float(plan.sigmas[0])
    graphs: dict[int, Any] = {}  # one captured run per batch size
    if plan.config.cuda_graph and target.type != "cuda":
        raise OptionError(f"--cuda-graph needs a CUDA device; this run samples on {target}")

    def sample(batch: Batch) -> Tensor:
        noise = seed_noise(batch.seeds, plan.model.shape, dtype=dtype, device=target) * first
        labels = seed_labels(plan, batch.seeds)
        cond = None if labels is None else torch.tensor(labels, device=target)
        if plan.config.cuda_graph:
            from .graphs import GraphedSampler

            size = len(batch.seeds)
            if size not in graphs:
                graphs[size] = GraphedSampler(
                    plan.solver, plan.model, plan.sigmas, noise, cond=cond,
                    afs=bool(plan.config.afs), denoise_to_zero=plan.config.denoise_to_zero,
                )
            x = graphs[size](noise, cond=cond)
        else:
            x = plan.solver.sample(
                plan.model, noise, plan.sigmas, cond=cond,
                afs=bool(plan.config.afs), denoise_to_zero=plan.config.denoise_to_zero,
            ).x
        return plan.model.decode(x) if isinstance(plan.model, Decodable) else x

    todo = plan.batches if batches is None else batches
    with _naming_half_precision(plan.config.dtype):
        if not overlap:
            with cudnn_autotune(plan.config.cudnn_benchmark):
                for batch in todo:
                    on_batch(batch, sample(batch).detach().to("cpu", torch.float32))
            return
        with cudnn_autotune(plan.config.cudnn_benchmark), BatchHandoff(on_batch) as handoff:
            for batch in todo:
                handoff.put(batch, sample(batch))


@contextmanager
def _naming_half_precision(dtype: str) -> Iterator[None]:
    """Point at the dtype when a half-precision run turns non-finite (its usual cause)."""
    try:
        yield
    except SamplingError as exc:
        if dtype not in _HALF or "non-finite" not in str(exc):
            raise
        raise SamplingError(
            f"{exc} with dtype {dtype}: half precision overflows on this model; use float32"
        ) from None
