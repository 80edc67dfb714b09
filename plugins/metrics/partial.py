"""The state of an interrupted ``fid ref``: the running feature moments (and features) of the
images measured so far, beside the statistics file it will become (``OUT.partial``, an ``.npz``).

A rerun of the same command (same image set, size, resize, weights and ``--features``) continues
after the last measured image; a state of other settings is ignored and replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
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
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
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
    def settings_of(data: Path, images: int, resize: str, weights: Path, features: bool) -> dict[str, Any]:
        """What the measured moments depend on: the image set (path, count, and its files' sizes and
        modification times), the resize, the Inception weights file, whether features are kept."""
        return {"data": os.fspath(data.resolve()), "images": images, "data_files": _fingerprint(data),
                "resize": resize, "weights": [os.fspath(weights.resolve()), *_stamp(weights)],
                "features": features}


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _fingerprint(path: Path) -> str:
    """A digest of the sizes and modification times of an image set's files (a folder's PNGs, or
    the one .zip/.npz file): another set under the same name gives another digest."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}:{_stamp(file)}\n".encode())
    return digest.hexdigest()
