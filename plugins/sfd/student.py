"""The SFD student: a fine-tuned copy of the teacher network plus the schedule it was trained on.

Saved as ``<stem>.safetensors`` (the network's weights, via :mod:`diffsampler.tensorfile`) and
``<stem>.json`` (format ``diffsampler.sfd/1``: the network's EDM config, the student's sigmas,
AFS, the training settings and the teacher's identity). ``diffsampler sample --model
student.json --solver euler --schedule sfd --schedule-opt file=student.json --steps N [--afs]``
samples it with its own schedule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffsampler import tensorfile
from diffsampler.errors import ModelLoadError
from diffsampler.plugins.edm.checkpoint import build_from_config, config_of, load_state_dict_strict
from diffsampler.plugins.edm.denoiser import EDMDenoiser
from diffsampler.plugins.edm.precond import Precond

from .format import FORMAT, PAPER, read_student_json

__all__ = ["SFDStudent", "load_student", "save_student"]


class SFDStudent(EDMDenoiser):
    """An EDM denoiser distilled by SFD, with the schedule (``sigmas``) it must be sampled on.

    ``recommended`` is ``"euler"``: the student was trained for plain Euler steps on exactly
    ``sigmas`` (with the analytical first step when ``afs``).
    """

    paper = PAPER
    recommended = "euler"

    def __init__(
        self,
        net: Precond,
        *,
        sigmas: tuple[float, ...],
        afs: bool,
        settings: dict[str, Any] | None = None,
        teacher: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, **kwargs)
        self.sigmas = tuple(float(s) for s in sigmas)
        self.afs = bool(afs)
        self.settings = dict(settings or {})
        self.teacher = dict(teacher or {})

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    @property
    def nfe(self) -> int:
        """Denoiser evaluations of one Euler run on :attr:`sigmas`."""
        return self.num_steps - 1 - int(self.afs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<stem>.safetensors`` + ``<stem>.json``; returns the JSON's path."""
        return save_student(
            self.net, path, sigmas=self.sigmas, afs=self.afs, settings=self.settings, teacher=self.teacher,
            sigma_min=self.sigma_min, sigma_max=self.sigma_max,
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
    device: str = "cpu",
) -> SFDStudent:
    """Read a student written by :func:`save_student` (``.json`` or its ``.safetensors``)."""
    json_path, data = read_student_json(path)
    where = str(json_path)
    weights = json_path.parent / str(data.get("weights", json_path.with_suffix(".safetensors").name))
    if not weights.is_file():
        raise ModelLoadError(f"{where}: its weights file {weights.name} is missing")
    net = build_from_config(data["network"], source=where)
    load_state_dict_strict(net, tensorfile.load_file(weights), source=str(weights))
    return SFDStudent(
        net, sigmas=tuple(data["sigmas"]), afs=bool(data.get("afs", False)),
        settings=dict(data.get("settings", {})), teacher=dict(data.get("teacher", {})),
        name=json_path.stem, sigma_min=float(data["sigma_min"]), sigma_max=float(data["sigma_max"]),
        precision=precision, class_label=class_label, device=device,
        info={"file": where, "format": FORMAT},
    )

