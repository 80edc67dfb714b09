"""Options of the SFD distiller, its student model and its schedule (torch-free)."""

from __future__ import annotations

from typing import Literal

import attrs

from diffsampler import choice, in_range, option, positive
from diffsampler.labels import labels_option

__all__ = [
    "DEFAULT_FIRST_SEED",
    "SEED_SIGMA_MAX",
    "SEED_SIGMA_MIN",
    "SEED_TEACHER",
    "SEED_TEACHER_OPTIONS",
    "SFDModelOptions",
    "SFDOptions",
    "SFDScheduleOptions",
    "SFDSolverOptions",
    "parse_pairs_text",
    "sigma_order_error",
]

#: Training noise uses seeds ``seed + k * batch + j`` (iteration k, row j): far from the seeds
#: that ``sample`` and ``compare`` use (0-63) and from GITS's warm-up seeds.
DEFAULT_FIRST_SEED = 2_000_000


def parse_pairs_text(text: str) -> dict[str, str]:
    """``key=value,...`` (or empty) into a dict of strings."""
    out: dict[str, str] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value pairs separated by commas, got {text!r}")
        out[key.strip()] = value.strip()
    return out


def sigma_order_error(sigma_min: float, sigma_max: float) -> str | None:
    """The one wording of "the noise range is empty" (``None`` when ``sigma_min < sigma_max``)."""
    if sigma_min < sigma_max:
        return None
    return f"sigma_min ({sigma_min:g}) must be below sigma_max ({sigma_max:g})"


def _pairs(text: str | None) -> str | None:
    if text is None:
        return None
    parse_pairs_text(text)
    return str(text)


#: The seed's noise range for EDM (pixel) and LDM teachers (``training_loop.py``: ``net.sigma_min =
#: 0.006``, ``sigma_max = 80``); its Stable Diffusion runs use ``sigma_min = 0.1``.
SEED_SIGMA_MIN = 0.006
SEED_SIGMA_MAX = 80.0
#: The seed's first-stage teacher: DPM-Solver++(3M) whose ``dpm_pp_sampler`` always applies
#: dynamic thresholding to the data prediction (``solvers.py``).
SEED_TEACHER = "dpmpp"
SEED_TEACHER_OPTIONS = "max_order=3,thresholding=dynamic"


@attrs.frozen(kw_only=True)
class SFDOptions:
    """SFD (Zhou et al. NeurIPS 2024, arXiv:2409.19681): fine-tune the teacher so that Euler steps
    on a coarse schedule land on a finer teacher solver's trajectory. Defaults are the seed's."""

    num_steps: int = option(
        4, help="sigmas of the student schedule (steps + 1); 4 with AFS = 2 NFE (seed default)",
        validator=in_range(2, 1000),
    )
    M: int = option(3, help="teacher points inserted between two student points", validator=in_range(0, 1000))
    teacher: str | None = option(
        None,
        help="teacher solver (any registered solver); None = the seed's rule: dpmpp, or euler when the "
        "teacher is an SFD student (the second stage)",
    )
    teacher_options: str | None = option(
        None,
        help="teacher solver options, key=value,...; None (or empty) = the seed's: "
        f"{SEED_TEACHER_OPTIONS} for dpmpp, none for any other solver",
        converter=_pairs,
    )
    teacher_afs: bool | None = option(
        None,
        help="teacher run with AFS; None = the seed's rule: off, or the student's own AFS when the "
        "teacher is an SFD student (the second stage)",
    )
    sigma_min: float | None = option(
        None,
        help=f"lowest sigma of the student and teacher grids; None = the seed's {SEED_SIGMA_MIN} (raised "
        "to the teacher's sigma_min if that is higher), or an SFD student teacher's own (pass 0.1 for "
        "Stable Diffusion, as the seed)",
        validator=attrs.validators.optional(positive),
    )
    sigma_max: float | None = option(
        None,
        help=f"highest sigma (the noise's scale); None = the seed's {SEED_SIGMA_MAX:g} (lowered to the "
        "teacher's sigma_max if that is lower), or an SFD student teacher's own",
        validator=attrs.validators.optional(positive),
    )
    schedule: Literal["polynomial"] = option(
        "polynomial", help="student and teacher schedule (the teacher's is M+1 times finer)",
        validator=choice("polynomial"),
    )
    rho: float = option(7.0, help="rho of the polynomial schedule", validator=positive)
    afs: bool = option(True, help="analytical first step: the first student step is free (seed default)")
    lr: float = option(5e-5, help="Adam learning rate (seed: 5e-5; betas 0.9, 0.999, eps 1e-8)", validator=positive)
    lr_drop: float = option(
        0.5,
        help="fraction of the training after which lr drops tenfold (seed: 0.5; as the seed, the iteration "
        "after the one that starts with that many trajectories seen)",
        validator=in_range(0, 1),
    )
    batch: int = option(128, help="trajectories per iteration (all processes together)", validator=in_range(1, 10**6))
    total_kimg: float = option(200.0, help="thousands of teacher trajectories to train on (seed: 200)", validator=positive)
    ema: float = option(
        0.0, help="EMA half-life of the student in kimg (0: no EMA, the seed's choice)", validator=in_range(0, 10**6)
    )
    step_condition: bool = option(
        False,
        help="SFD-v: one student for every step count min_steps..max_steps, drawn per batch "
        "(the seed's use_step_condition; num_steps is then only the default for sampling)",
    )
    min_steps: int = option(4, help="SFD-v: fewest student sigmas (seed: 4 = 2 NFE with AFS)", validator=in_range(2, 1000))
    max_steps: int = option(7, help="SFD-v: most student sigmas (seed: 7 = 5 NFE with AFS)", validator=in_range(2, 1000))
    labels: str = labels_option("training trajectories")
    lpips: float | None = option(
        None,
        help="weight of the LPIPS term on the last student step (seed: 1 in the second stage, "
        "i.e. when the teacher is an SFD student; None = that rule; 0 = L1 only)",
        validator=attrs.validators.optional(in_range(0, 10**6)),
    )
    lpips_vgg: str | None = option(None, help="local torchvision VGG16 weights (vgg16-397923af.pth) for LPIPS")
    lpips_lin: str | None = option(
        None, help="local LPIPS linear weights (piq's lpips_weights.pt or PerceptualSimilarity's vgg.pth)"
    )
    seed: int = option(DEFAULT_FIRST_SEED, help="first training-noise seed", validator=in_range(0, 2**62))
    device: str = option("cpu", help="cpu, cuda or cuda:N")

    def __attrs_post_init__(self) -> None:
        if self.step_condition and self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        if self.sigma_min is not None and self.sigma_max is not None:
            empty = sigma_order_error(self.sigma_min, self.sigma_max)
            if empty:
                raise ValueError(empty)
        if self.step_condition and not self.min_steps <= self.num_steps <= self.max_steps:
            raise ValueError(
                f"num_steps ({self.num_steps}) must lie in min_steps..max_steps ({self.min_steps}..{self.max_steps})"
            )

    @property
    def step_counts(self) -> tuple[int, ...]:
        """The student step counts trained: ``num_steps``, or ``min_steps..max_steps`` for SFD-v."""
        if self.step_condition:
            return tuple(range(self.min_steps, self.max_steps + 1))
        return (self.num_steps,)

    @property
    def iterations(self) -> int:
        """Training iterations (batches): ``ceil(total_kimg * 1000 / batch)``."""
        import math

        return max(1, math.ceil(self.total_kimg * 1000 / self.batch - 1e-9))


@attrs.frozen(kw_only=True)
class SFDScheduleOptions:
    """Options of the ``sfd`` schedule: the sigmas stored in a student file."""

    file: str | None = option(None, help="SFD student JSON written by diffsampler sfd train (required)")


@attrs.frozen(kw_only=True)
class SFDSolverOptions:
    """Options of the ``sfd`` solver: the student that samples in place of its teacher."""

    student: str | None = option(None, help="SFD student JSON written by diffsampler sfd train (required)")


@attrs.frozen(kw_only=True)
class SFDModelOptions:
    """Options of the ``sfd`` model: a distilled student file."""

    path: str | None = option(None, help="SFD student JSON (or its .safetensors)")
    precision: str = option("fp32", help="fp32, tf32, fp16 or bf16", validator=choice("fp32", "tf32", "fp16", "bf16"))
    class_label: int | None = option(None, help="class for a class-conditional student")
    steps: int | None = option(
        None, help="SFD-v students: the step count to serve (sample with the same --steps; default: the trained num_steps)"
    )
    device: str = option("cpu", help="cpu, cuda or cuda:N")
