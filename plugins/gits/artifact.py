"""The GITS artefact: a searched schedule saved as JSON, and the ``gits`` schedule that loads it.

A file holds the sigmas, the indices into the teacher's grid they were chosen from, every
setting that produced them, the model's identity and the search's costs. ``--schedule gits
--schedule-opt file=FILE`` (or ``ipndm@gits[file=FILE]`` in ``compare``) samples with it, with
any solver; the number of sigmas asked for must equal the file's, and the model must have the
sample shape the file was searched for.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from diffsampler import Denoiser, ScheduleBase
from diffsampler.errors import OptionError
from diffsampler.sigmas import sigma_tuple

from .options import GITSScheduleOptions

__all__ = ["FORMAT", "GITSSchedule", "GITSScheduleFile", "load_schedule", "model_flags"]

FORMAT = "diffsampler.gits/1"
PAPER = (
    "Chen et al. 2024, On the Trajectory Regularity of ODE-based Diffusion Sampling, "
    "ICML 2024, arXiv:2405.11326"
)
_RANGE_RTOL = 1e-6
_WRITTEN_BY = "JSON written by diffsampler gits search"


def _int_tuple(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _sigmas(values: Any) -> tuple[float, ...]:
    return sigma_tuple(values)


@attrs.frozen(kw_only=True)
class GITSSchedule:
    """A searched schedule (the artefact of the ``gits`` distiller); it saves itself as JSON."""

    sigmas: tuple[float, ...] = attrs.field(converter=_sigmas)
    indices: tuple[int, ...] = attrs.field(converter=_int_tuple)
    afs: bool
    settings: dict[str, Any]
    model: dict[str, Any]
    costs: dict[str, Any] = attrs.field(factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": PAPER,
            "num_steps": self.num_steps,
            "sigmas": list(self.sigmas),
            "indices": list(self.indices),
            "afs": self.afs,
            "settings": self.settings,
            "model": self.model,
            "costs": self.costs,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON file atomically (a temporary file, then a rename); a failure leaves
        no temporary file behind and is one :class:`OptionError` line."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            why = "it is a folder" if target.is_dir() else exc.strerror or str(exc)
            raise OptionError(f"cannot write the GITS schedule file {str(target)!r}: {why}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "GITS data") -> GITSSchedule:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise OptionError(
                f"{where} is not a GITS schedule file ({_WRITTEN_BY}, format {FORMAT!r})"
            )
        try:
            out = cls(
                sigmas=data["sigmas"], indices=data.get("indices", ()), afs=bool(data.get("afs", False)),
                settings=dict(data.get("settings", {})), model=dict(data.get("model", {})),
                costs=dict(data.get("costs", {})),
            )
        except KeyError as exc:
            raise OptionError(f"{where} lacks the field {exc.args[0]!r}") from None
        except Exception as exc:  # bad sigmas: one clear line
            raise OptionError(f"{where}: {exc}") from None
        if "num_steps" in data and data["num_steps"] != out.num_steps:
            raise OptionError(
                f"{where} says num_steps={data['num_steps']} but holds {out.num_steps} sigmas"
            )
        return out


def load_schedule(path: str | os.PathLike[str]) -> GITSSchedule:
    """Read a GITS schedule file; every problem is one :class:`OptionError` line."""
    p = Path(path)
    if p.is_dir():
        raise OptionError(f"GITS schedule file {str(p)!r} is a folder, not a file")
    if not p.is_file():
        raise OptionError(f"GITS schedule file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"cannot read GITS schedule file {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise OptionError(f"{str(p)!r} is not a GITS schedule ({_WRITTEN_BY})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(
            f"{str(p)!r} is not a GITS schedule ({_WRITTEN_BY}): invalid JSON at line {exc.lineno}"
        ) from None
    return GITSSchedule.from_dict(data, where=f"GITS schedule file {str(p)!r}")


def model_flags(model: dict[str, Any]) -> str:
    """The ``--model NAME --model-opt k=v ...`` flags that rebuild a file's recorded model."""
    from shlex import quote

    name = str(model.get("name") or model.get("class") or "?")
    options = model.get("options") or {}
    opts = options.items() if isinstance(options, dict) else ()
    return f"--model {quote(name)}" + "".join(f" --model-opt {quote(f'{k}={v}')}" for k, v in opts)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_RANGE_RTOL, abs_tol=0.0)


class GITSScheduleFile(ScheduleBase):
    """A schedule searched by GITS, read from its file (``--schedule-opt file=FILE``)."""

    Options = GITSScheduleOptions
    paper = PAPER

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.schedule = None if self.options.file is None else load_schedule(self.options.file)

    def compute(
        self, num_steps: int, sigma_min: float, sigma_max: float, denoiser: Denoiser | None
    ) -> np.ndarray:
        s = self.schedule
        if s is None:
            raise OptionError(
                "schedule 'gits' needs a schedule file: --schedule-opt file=FILE "
                "(written by diffsampler gits search)"
            )
        if num_steps != s.num_steps:
            raise OptionError(self._count_message(s, num_steps))
        if not (_close(s.sigmas[0], sigma_max) and _close(s.sigmas[-1], sigma_min)):
            raise OptionError(
                f"the GITS file {self.options.file!r} spans sigma {s.sigmas[-1]:g}..{s.sigmas[0]:g}, "
                f"but the run asks for {sigma_min:g}..{sigma_max:g} (search again for this range)"
            )
        if denoiser is not None:
            self._check_shape(s, denoiser)
        return np.asarray(s.sigmas, dtype=np.float64)

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """The searched step count, AFS setting and the class labels of its warm-up
        (:class:`~diffsampler.SamplesItself`): ``diffsampler sample --schedule gits --schedule-opt
        file=F`` needs no ``--steps`` (nor ``--labels``)."""
        from diffsampler.labels import recorded_sampling_labels

        s = self.schedule
        if s is None:
            return {}
        labels = recorded_sampling_labels(s.settings.get("labels"))
        plan = {"num_steps": s.num_steps, "afs": bool(s.afs)}
        return plan if labels is None else {**plan, "labels": labels}

    def _count_message(self, s: GITSSchedule, num_steps: int) -> str:
        if s.afs:
            return (
                f"the GITS file {self.options.file!r} was searched with AFS: sample with --afs "
                f"--steps {s.num_steps} ({s.num_steps} sigmas); {num_steps} were asked for"
            )
        return (
            f"the GITS file {self.options.file!r} has {s.num_steps} sigmas "
            f"({s.num_steps - 1} steps; --steps {s.num_steps}), but {num_steps} were asked for"
        )

    def _check_shape(self, s: GITSSchedule, denoiser: Denoiser) -> None:
        """A schedule is searched for one model: refuse a model with another sample shape."""
        want = s.model.get("shape")
        shape = getattr(denoiser, "shape", None)
        if not want or shape is None or [int(v) for v in shape] == [int(v) for v in want]:
            return
        this = getattr(denoiser, "name", None) or type(denoiser).__name__
        raise OptionError(
            f"the GITS file {self.options.file!r} was searched for model {s.model.get('name')!r} "
            f"(sample shape {tuple(want)}); this run's model {this!r} has shape {tuple(shape)}: "
            f"sample with {model_flags(s.model)}, or search again for this model"
        )

    def check(self, denoiser: Denoiser, sigmas: Sequence[float], *, afs: bool = False) -> None:
        """Refuse a run whose AFS setting differs from the search's (:class:`ChecksRun`).

        The sigmas alone cannot tell: a file searched with AFS has as many sigmas as a run of
        ``--steps N`` without it, which then spends one NFE more than the search planned.
        """
        s = self.schedule
        if s is None or bool(afs) == bool(s.afs):
            return
        if s.afs:
            raise OptionError(f"the GITS file {self.options.file!r} was searched with AFS: sample with --afs")
        raise OptionError(f"the GITS file {self.options.file!r} was searched without AFS: sample without --afs")
