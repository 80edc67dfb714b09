"""The options of the GITS distiller (torch-free: ``diffsampler info gits`` reads them)."""

from __future__ import annotations

from typing import Literal

import attrs

from diffsampler import choice, in_range, option, positive
from diffsampler.labels import labels_option

__all__ = ["DEFAULT_FIRST_SEED", "GITSOptions", "GITSScheduleOptions"]

#: Warm-up trajectories use seeds ``seed, seed + 1, ...``: far from the seeds ``sample`` and
#: ``compare`` use by default (0-63), so a schedule is never judged on its own training noise.
DEFAULT_FIRST_SEED = 1_000_000


def _pairs(text: str) -> str:
    """``key=value,...`` (or empty): checked here, parsed by the search."""
    for part in str(text).split(","):
        if part.strip() and "=" not in part:
            raise ValueError(f"expected key=value pairs separated by commas, got {text!r}")
    return str(text)


@attrs.frozen(kw_only=True)
class GITSOptions:
    """GITS (Chen et al. ICML 2024, arXiv:2405.11326, Sec. 5): DP over a teacher's time grid."""

    num_steps: int = option(
        7, help="sigmas of the searched schedule (steps + 1); the seed's default 7 = 6 steps",
        validator=in_range(2, 1000),
    )
    coeff: float = option(
        1.15, help="DP coefficient: step s (from the start) costs coeff^s times its cost",
        validator=positive,
    )
    metric: Literal["dev", "l1", "l2"] = option(
        "dev", help="cost of one Euler step against the teacher: dev (seed default), l1, l2",
        validator=choice("dev", "l1", "l2"),
    )
    num_warmup: int = option(256, help="teacher trajectories", validator=in_range(1, 10**7))
    teacher: str = option("ipndm", help="teacher solver (any registered solver)")
    teacher_options: str = option(
        "", help="teacher solver options, key=value,... (ipndm: max_order=4 by default)",
        converter=_pairs,
    )
    teacher_steps: int = option(
        61, help="teacher time points (the seed README uses 61; its code default is 21)",
        validator=in_range(3, 100000),
    )
    teacher_schedule: str = option(
        "polynomial", help="schedule of the teacher's grid (registered schedule)"
    )
    teacher_rho: float = option(7.0, help="rho of the teacher's schedule (polynomial, time_uniform, discrete)",
                                validator=positive)
    afs: bool = option(
        False, help="search one extra, free first step between the first two points (seed's AFS)"
    )
    afs_samples: int = option(
        64, help="warm-up trajectories that score each AFS candidate (the seed: one batch, 64); 0: all",
        validator=in_range(0, 10**7),
    )
    solver: str = option("ipndm", help="student solver used by the AFS search")
    solver_options: str = option("", help="student solver options, key=value,...", converter=_pairs)
    batch: int = option(64, help="trajectories per batch (bounds memory)", validator=in_range(1, 10**6))
    seed: int = option(
        DEFAULT_FIRST_SEED, help="first warm-up seed (noise per seed, as in sample)",
        validator=in_range(0, 2**62),
    )
    dtype: Literal["float32", "float64"] = option(
        "float32", help="dtype of the trajectories", validator=choice("float32", "float64")
    )
    device: str = option("cpu", help="cpu, cuda or cuda:N")
    labels: str = labels_option("warm-up trajectories")


@attrs.frozen(kw_only=True)
class GITSScheduleOptions:
    """Options of the ``gits`` schedule: a schedule file written by ``diffsampler gits search``."""

    file: str | None = option(
        None, help="GITS schedule file (JSON) written by diffsampler gits search (required to sample)"
    )
