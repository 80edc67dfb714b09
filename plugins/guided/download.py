"""Where the weights of a named ADM / Consistency-Models network come from (torch-free).

In order: the model option (``path`` / ``classifier_path``); the file's environment variable
(e.g. ``DIFFSAMPLER_ADM_IMAGENET256``); the cache ``$DIFFSAMPLER_CACHE/guided/<file>``; else a
download from the seed's URL into the cache, unless ``download=False`` or
``DIFFSAMPLER_OFFLINE=1``. The lookup itself is the core's (:mod:`diffsampler.weights`).
"""

from __future__ import annotations

from pathlib import Path

from diffsampler.weights import WeightsFile, locate

from .catalog import Weights

__all__ = ["local_copy", "resolve"]


def _file(name: str, w: Weights) -> WeightsFile:
    return WeightsFile(what=name, file=w.file, url=w.url, env_var=w.env_var, subdir="guided")


def local_copy(w: Weights) -> Path | None:
    """The env var's file or the cached file, when present."""
    return _file(w.file, w).local_copy()


def resolve(name: str, w: Weights, *, path: str | None = None, download: bool = True) -> Path:
    """The local file of ``w``, downloading it when allowed; else a :class:`ModelLoadError`."""
    return locate(_file(name, w), path=path, allow_download=download)
