"""diffsampler: fast sampling of diffusion models.

The small, stable API that plugins and scripts depend on::

    import diffsampler as ds

    solver = ds.get_solver("euler")
    schedule = ds.get_schedule("polynomial", rho=7)
    model = ds.get_model("gmm")
    sigmas = schedule.sigmas(6, model.sigma_min, model.sigma_max, denoiser=model)
    result = solver.sample(model, noise * sigmas[0], sigmas)

Importing this package does not import torch; components import it when they run.
"""

from ._version import __version__
from .api import (
    get_distiller,
    get_metric,
    get_model,
    get_schedule,
    get_solver,
    list_components,
    resolve_num_steps,
    sample,
)
from .denoiser import DenoiserBase
from .errors import (
    DiffSamplerError,
    DuplicateComponentError,
    MissingExtraError,
    ModelLoadError,
    OptionError,
    PluginError,
    SamplingError,
    UnknownComponentError,
    UnreachableNFEError,
)
from .hookspecs import hookimpl, hookspec
from .options import build_options, choice, describe_options, in_range, option, positive
from .protocols import (
    Analytic,
    Artifact,
    ChecksRun,
    ClassConditional,
    Compilable,
    Decodable,
    Denoiser,
    Distiller,
    HasBottleneck,
    Metric,
    SampleResult,
    SamplesItself,
    Schedule,
    Solver,
    StepCallback,
    TimeMapped,
)
from .registry import discover, get_registry, reset_registry
from .schedule import ScheduleBase, SigmaList
from .seeds import format_seeds, parse_seeds, plan_batches, seed_noise
from .solver import ODESolver, Run, steps_for_nfe

__all__ = [
    "Analytic",
    "Artifact",
    "ChecksRun",
    "ClassConditional",
    "Compilable",
    "Decodable",
    "Denoiser",
    "DenoiserBase",
    "DiffSamplerError",
    "Distiller",
    "DuplicateComponentError",
    "HasBottleneck",
    "Metric",
    "MissingExtraError",
    "ModelLoadError",
    "ODESolver",
    "OptionError",
    "PluginError",
    "Run",
    "SampleResult",
    "SamplesItself",
    "SamplingError",
    "Schedule",
    "ScheduleBase",
    "SigmaList",
    "Solver",
    "StepCallback",
    "TimeMapped",
    "UnknownComponentError",
    "UnreachableNFEError",
    "__version__",
    "build_options",
    "choice",
    "describe_options",
    "discover",
    "format_seeds",
    "get_distiller",
    "get_metric",
    "get_model",
    "get_registry",
    "get_schedule",
    "get_solver",
    "hookimpl",
    "hookspec",
    "in_range",
    "list_components",
    "option",
    "parse_seeds",
    "plan_batches",
    "positive",
    "reset_registry",
    "resolve_num_steps",
    "sample",
    "seed_noise",
    "steps_for_nfe",
]
