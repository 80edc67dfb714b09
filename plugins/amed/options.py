"""Options of the AMED distiller and solvers (torch-free: ``diffsampler info amed`` reads them)."""

from __future__ import annotations

from typing import Literal

import attrs

from diffsampler import choice, in_range, option, positive
from diffsampler.errors import OptionError
from diffsampler.labels import labels_option

__all__ = ["DEFAULT_FIRST_SEED", "STUDENTS", "TEACHERS", "AMEDOptions", "AMEDSolverOptions"]

#: The student solvers the predictor can drive: ``amed`` is AMED-Solver, the rest AMED-Plugin.
STUDENTS = ("amed", "euler", "ipndm", "dpm", "dpmpp")
#: The teacher solvers of the seed's ``train.py`` (``--sampler_tea``).
TEACHERS = ("heun", "dpm", "dpmpp", "euler", "ipndm")
#: Training noise uses seeds ``seed, seed + 1, ...``, far from the seeds ``sample`` and
#: ``compare`` use by default, so a predictor is never judged on its own training noise.
DEFAULT_FIRST_SEED = 2_000_000


def _scale_bound(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise OptionError(f"option {attribute.name} must be in [0, 1), got {value!r}")


@attrs.frozen(kw_only=True)
class AMEDOptions:
    """AMED (Zhou et al. CVPR 2024, arXiv:2312.00094, Sec. 3.2 and Alg. 1): train the predictor.

    Defaults are the seed's ``train.py`` except ``batch`` and ``total_kimg``, kept small for CPU.
    """

    solver: Literal["amed", "euler", "ipndm", "dpm", "dpmpp"] = option(
        "amed", help="student: amed (AMED-Solver) or euler/ipndm/dpm/dpmpp (AMED-Plugin)",
        validator=choice(*STUDENTS),
    )
    num_steps: int = option(
        4, help="sigmas of the student's schedule (steps + 1); NFE = 2 (num_steps - 1) - afs",
        validator=in_range(2, 1000),
    )
    teacher: Literal["heun", "dpm", "dpmpp", "euler", "ipndm"] = option(
        "heun", help="teacher solver (the seed's default heun)", validator=choice(*TEACHERS)
    )
    m: int = option(1, help="teacher time points inserted in every student interval (M)",
                    validator=in_range(1, 1000))
    schedule: str = option("polynomial", help="schedule of student and teacher (registered name)")
    rho: float = option(7.0, help="rho of the schedule (polynomial, time_uniform, discrete)",
                        validator=positive)
    afs: bool = option(True, help="analytical first step (seed default on; sample with --afs)")
    scale_dir: float = option(
        0.01, help="direction scale in [1 - scale_dir, 1 + scale_dir] (0: off)",
        validator=_scale_bound,
    )
    scale_time: float = option(
        0.0, help="time scale in [1 - scale_time, 1 + scale_time] (0: off)",
        validator=_scale_bound,
    )
    max_order: int = option(3, help="highest order of ipndm (<= 4) and dpmpp (<= 3) students and teachers",
                            validator=in_range(1, 4))
    predict_x0: bool = option(True, help="dpmpp: data prediction")
    lower_order_final: bool = option(True, help="dpmpp: lower the order on the last steps")
    thresholding: Literal["dynamic"] | None = option(
        None, help="dpmpp (student and teacher) with data prediction: 'dynamic' thresholds every data "
        "prediction as the seed always does (Saharia et al. 2022); none: off (our default)",
        validator=choice(None, "dynamic"),
    )
    lr: float = option(5e-3, help="Adam learning rate (seed 5e-3)", validator=positive)
    batch: int = option(16, help="trajectories per iteration (seed 512; small for CPU)",
                        validator=in_range(1, 10**6))
    total_kimg: float = option(
        0.2, help="thousands of training trajectories (seed 10; 0.2 = 200 on CPU)",
        validator=positive,
    )
    hidden_dim: int = option(128, help="hidden width of the bottleneck encoder (seed 128)",
                             validator=in_range(1, 10**5))
    seed: int = option(DEFAULT_FIRST_SEED, help="first noise seed; also seeds the predictor's init")
    labels: str = labels_option("training trajectories")

    def __attrs_post_init__(self) -> None:
        if self.solver == "dpmpp" and self.max_order > 3:
            raise OptionError("option max_order must be <= 3 for the dpmpp student")
        if self.thresholding is not None:
            if "dpmpp" not in (self.solver, self.teacher):
                raise OptionError("option thresholding acts on dpmpp's data predictions: the student "
                                  "(solver) or the teacher must be dpmpp")
            if not self.predict_x0:
                raise OptionError("option thresholding needs predict_x0=True (it acts on data predictions)")


@attrs.frozen(kw_only=True)
class AMEDSolverOptions:
    """A trained predictor file; the student's own settings (max_order, ...) come from it."""

    predictor: str | None = option(
        None, help="predictor file written by 'diffsampler amed train' (.safetensors)"
    )

