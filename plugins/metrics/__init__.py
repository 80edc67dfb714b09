"""Built-in metrics (entry point ``metrics``).

* ``l2-exact``, ``fd-exact``: exact metrics of analytic models (:mod:`.analytic`);
* ``l2-teacher``: error to a fine teacher run from the same noise, for any model;
* ``fid``: Frechet Inception Distance with FID's Inception-v3 (:mod:`.fid`, :mod:`.inception`);
* ``prdc``: precision, recall, density, coverage (:mod:`.prdc`);
* ``clip-score``: CLIP score against prompts (:mod:`.clip_score`, needs transformers).

Commands: ``diffsampler fid ref|calc``, ``diffsampler prdc``, ``diffsampler clip-score``
(:mod:`.cli`). This module imports no torch: the factories import the implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .analytic import FrechetOptions, TeacherOptions, exact_error, exact_frechet, teacher_error
from .clip_score import CLIPScoreOptions, clip_metric
from .fid import FIDOptions, fid_metric
from .prdc import PRDCOptions, prdc_metric

if TYPE_CHECKING:
    import typer


@hookimpl
def register_metrics(register: Register) -> None:
    register("l2-exact", exact_error, summary="RMS error to the exact ODE endpoint (analytic models)")
    register(
        "fd-exact", exact_frechet, options=FrechetOptions,
        summary="Frechet distance to the exact data moments (analytic models)",
    )
    register(
        "l2-teacher", teacher_error, options=TeacherOptions,
        summary="RMS error to a fine teacher run from the same noise (any model)",
    )
    register("fid", fid_metric, options=FIDOptions,
             summary="Frechet Inception Distance to reference statistics (FID's Inception-v3)")
    register("prdc", prdc_metric, options=PRDCOptions,
             summary="precision, recall, density, coverage in Inception features (Naeem et al. 2020)")
    register("clip-score", clip_metric, options=CLIPScoreOptions,
             summary="CLIP score of images against prompts (100 x cosine; needs transformers)")


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from .cli import add_commands

    add_commands(app)
