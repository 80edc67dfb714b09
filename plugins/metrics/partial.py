"""The state of an interrupted ``fid ref``: the running feature moments (and features) of the
images measured so far, beside the statistics file it will become (``OUT.partial``, an ``.npz``).

A rerun of the same command (same image set, size, resize, weights and ``--features``) continues
after the last measured image; a state of other settings is ignored and replaced.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .fid import FeatureMoments

__all__ = ["ReferenceState", "partial_path"]


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


class ReferenceState:
    """What ``fid ref`` has measured: moments, optional features, and the settings they belong to."""

    def __init__(self, settings: dict[str, Any], moments: FeatureMoments | None = None,
                 features: list[np.ndarray] | None = None) -> None:
        self.settings = settings
        self.moments = moments or FeatureMoments()
        self.features = features if features is not None else []

    @classmethod
    def resume(cls, path: Path, settings: dict[str, Any]) -> tuple[ReferenceState, str | None]:
        """The state saved at ``path`` when it was made with ``settings`` (else a fresh one), and
        why a saved state was not used (None when there was none or it was used)."""
        if not path.exists():
            return cls(settings), None
        try:
            with np.load(path, allow_pickle=False) as data:
                saved = json.loads(str(data["settings"]))
                if saved != settings:
                    return cls(settings), f"{path} holds an interrupted reference of other settings: starting afresh"
                moments = FeatureMoments.from_state({k: data[k] for k in ("count", "sum", "outer") if k in data})
                features = [data["features"]] if "features" in data else []
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            return cls(settings), f"{path} is not a readable interrupted reference ({exc}): starting afresh"
        return cls(settings, moments, features), None

    @property
    def count(self) -> int:
        return self.moments.count

    def save(self, path: Path) -> None:
        from diffsampler.outputs import atomic_write_bytes

        arrays: dict[str, Any] = {"settings": np.array(json.dumps(self.settings, sort_keys=True)),
                                  **self.moments.state()}
        if self.features:
            arrays["features"] = np.concatenate(self.features)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @staticmethod
    def settings_of(data: Path, images: int, resize: str, weights: str | None, features: bool) -> dict[str, Any]:
        return {"data": os.fspath(data.resolve()), "images": images, "resize": resize,
                "weights": os.fspath(Path(weights).resolve()) if weights else None, "features": features}
