"""The SFD student: a fine-tuned copy of the teacher network plus the schedule it was trained on.

Saved as ``<stem>.safetensors`` (the network's weights, via :mod:`diffsampler.tensorfile`) and
``<stem>.json`` (format ``diffsampler.sfd/1``: the network's EDM config, the student's sigmas,
AFS, the training settings and the teacher's identity). ``diffsampler sample --model
student.json --solver euler --schedule sfd --schedule-opt file=student.json --steps N [--afs]``
samples it with its own schedule. An SFD-v student (built with a step condition) serves
several step counts: its JSON lists the sigmas of each (``sigmas_by_steps``) and the model
option ``steps`` picks the one to serve.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffsampler import tensorfile
from diffsampler.errors import ModelLoadError, OptionError
from diffsampler.plugins.edm.checkpoint import build_from_config, config_of, load_state_dict_strict
from diffsampler.plugins.edm.denoiser import EDMDenoiser
from diffsampler.plugins.edm.precond import Precond

from .format import FORMAT, PAPER, read_student_json, sigma_table_of

__all__ = ["SFDStudent", "load_student", "save_student"]


class SFDStudent(EDMDenoiser):
    """An EDM denoiser distilled by SFD, with the schedule (``sigmas``) it must be sampled on.

    ``recommended`` is ``"euler"``: the student was trained for plain Euler steps on exactly
    ``sigmas`` (with the analytical first step when ``afs``). ``sigma_table`` holds the sigmas
    of every step count it was trained for (several for SFD-v); ``steps`` is the one it serves,
    passed to an SFD-v network as its step condition.
    """

    paper = PAPER
    recommended = "euler"

    def __init__(
        self,
        net: Precond,
        *,
        sigmas: Sequence[float],
        afs: bool,
        sigma_table: Mapping[int, Sequence[float]] | None = None,
        settings: dict[str, Any] | None = None,
        teacher: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, **kwargs)
        current = tuple(float(s) for s in sigmas)
        table = {int(n): tuple(float(s) for s in v) for n, v in (sigma_table or {}).items()}
        table.setdefault(len(current), current)
        self.sigma_table = dict(sorted(table.items()))
        self.steps = len(current)
        self.afs = bool(afs)
        self.settings = dict(settings or {})
        self.teacher = dict(teacher or {})
        self.step_condition = self.steps if getattr(net.model, "map_step", None) is not None else None

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The sigmas of the step count served (:attr:`steps`)."""
        return self.sigma_table[self.steps]

    @property
    def num_steps(self) -> int:
        return self.steps

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """How ``sample`` runs the student unless told otherwise (:class:`diffsampler.SamplesItself`):
        Euler on its own sigmas (the ``sfd`` schedule reads them from the model), with its AFS;
        a class-conditional student gets the labels it was trained on (``settings.labels``:
        ``random``, ``seed`` or a class index; ``none`` and older ``none`` students get none)
        unless it is loaded with a ``class_label`` of its own."""
        plan: dict[str, Any] = {"solver": "euler", "schedule": "sfd", "num_steps": self.steps, "afs": self.afs}
        trained = str(self.settings.get("labels", "none"))
        if self.label_dim and self.class_label is None and (trained in ("random", "seed") or trained.isdigit()):
            plan["labels"] = trained
        return plan

    def with_steps(self, steps: int) -> SFDStudent:
        """The same network serving ``steps`` sigmas (an SFD-v student; shares the weights)."""
        if steps not in self.sigma_table:
            counts = ", ".join(str(n) for n in self.sigma_table)
            raise OptionError(f"the SFD student {self.name!r} was trained for {counts} sigmas, not {steps}")
        twin = copy.copy(self)
        twin.steps = steps
        twin.step_condition = steps if self.step_condition is not None else None
        return twin

    @property
    def nfe(self) -> int:
        """Denoiser evaluations of one Euler run on :attr:`sigmas`."""
        return self.num_steps - 1 - int(self.afs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<stem>.safetensors`` + ``<stem>.json``; returns the JSON's path."""
        return save_student(
            self.net, path, sigmas=self.sigmas, afs=self.afs, settings=self.settings, teacher=self.teacher,
            sigma_min=self.sigma_min, sigma_max=self.sigma_max, sigma_table=self.sigma_table,
        )


def save_student(
    net: Precond,
    path: str | os.PathLike[str],
    *,
    sigmas: tuple[float, ...],
    afs: bool,
    settings: dict[str, Any],
    teacher: dict[str, Any],
    sigma_min: float,
    sigma_max: float,
    sigma_table: Mapping[int, Sequence[float]] | None = None,
) -> Path:
    """Write a student network and its JSON (atomically, file by file); returns the JSON path."""
    p = Path(path)
    json_path = p.with_suffix(".json")
    weights = p.with_suffix(".safetensors")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
    tensorfile.save_file(state, weights, metadata={"format": FORMAT})
    data = {
        "format": FORMAT,
        "method": PAPER,
        "weights": weights.name,
        "num_steps": len(sigmas),
        "nfe": len(sigmas) - 1 - int(afs),
        "sigmas": [float(s) for s in sigmas],
        "afs": bool(afs),
        "solver": "euler",
        "sigma_min": float(sigma_min),
        "sigma_max": float(sigma_max),
        "step_condition": getattr(net.model, "map_step", None) is not None,
        "sigmas_by_steps": {str(n): [float(s) for s in v] for n, v in sorted((sigma_table or {}).items())},
        "network": config_of(net),
        "settings": settings,
        "teacher": teacher,
    }
    tmp = json_path.with_name(f".{json_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    return json_path


def load_student(
    path: str | os.PathLike[str],
    *,
    precision: str = "fp32",
    class_label: int | None = None,
    steps: int | None = None,
    device: str = "cpu",
) -> SFDStudent:
    """Read a student written by :func:`save_student` (``.json`` or its ``.safetensors``);
    ``steps`` picks the step count an SFD-v student serves (default: its trained ``num_steps``)."""
    json_path, data = read_student_json(path)
    where = str(json_path)
    weights = json_path.parent / str(data.get("weights", json_path.with_suffix(".safetensors").name))
    if not weights.is_file():
        raise ModelLoadError(f"{where}: its weights file {weights.name} is missing")
    net = build_from_config(data["network"], source=where)
    load_state_dict_strict(net, tensorfile.load_file(weights), source=str(weights))
    student = SFDStudent(
        net, sigmas=tuple(data["sigmas"]), afs=bool(data.get("afs", False)),
        sigma_table=sigma_table_of(data),
        settings=dict(data.get("settings", {})), teacher=dict(data.get("teacher", {})),
        name=json_path.stem, sigma_min=float(data["sigma_min"]), sigma_max=float(data["sigma_max"]),
        precision=precision, class_label=class_label, device=device,
        info={"file": where, "format": FORMAT},
    )
    return student if steps is None else student.with_steps(steps)

