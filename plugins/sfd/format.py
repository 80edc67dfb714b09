"""The student file format, read without torch (the model's ``loads_file`` and the schedule)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffsampler.errors import ModelLoadError

__all__ = ["FORMAT", "PAPER", "is_student_file", "read_student_json", "sigma_table_of"]

FORMAT = "diffsampler.sfd/1"
PAPER = "Zhou et al. 2024, Simple and Fast Distillation of Diffusion Models, NeurIPS 2024, arXiv:2409.19681"
_REQUIRED = ("sigmas", "network", "sigma_min", "sigma_max")


def _json_of(path: Path) -> Path:
    return path.with_suffix(".json") if path.suffix == ".safetensors" else path


def is_student_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a ``.json`` or its ``.safetensors``) is an SFD student."""
    p = _json_of(Path(path))
    if p.suffix != ".json" or not p.is_file():
        return False
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def read_student_json(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The JSON path and its content; any problem is one :class:`ModelLoadError` line."""
    p = _json_of(Path(path))
    if not p.is_file():
        raise ModelLoadError(f"SFD student file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read SFD student file {str(p)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelLoadError(f"{str(p)!r} is not an SFD student file (format {FORMAT!r} expected)")
    for key in _REQUIRED:
        if key not in data:
            raise ModelLoadError(f"SFD student file {str(p)!r} lacks the field {key!r}")
    return p, data


def sigma_table_of(data: dict[str, Any]) -> dict[int, tuple[float, ...]]:
    """Step count -> sigmas of a student JSON: ``sigmas_by_steps`` (SFD-v) plus ``sigmas``."""
    table = {int(n): tuple(float(s) for s in v) for n, v in (data.get("sigmas_by_steps") or {}).items()}
    main = tuple(float(s) for s in data["sigmas"])
    table.setdefault(len(main), main)
    return dict(sorted(table.items()))
