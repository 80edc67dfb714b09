"""Where the weights of a named ADM / Consistency-Models network come from (torch-free).

In order: the model option (``path`` / ``classifier_path``); the file's environment variable
(e.g. ``DIFFSAMPLER_ADM_IMAGENET256``); the cache ``$DIFFSAMPLER_CACHE/guided/<file>``; else a
download from the seed's URL into the cache, unless ``download=False`` or
``DIFFSAMPLER_OFFLINE=1``. The cache and download helpers are the ``edm`` plugin's.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

from diffsampler.errors import ModelLoadError
from diffsampler.plugins.edm.download import OFFLINE_ENV, _download, cache_dir

from .catalog import Weights

__all__ = ["local_copy", "resolve"]


def _cached(w: Weights) -> Path:
    return cache_dir() / "guided" / w.file


def local_copy(w: Weights) -> Path | None:
    """The env var's file or the cached file, when present."""
    env = os.environ.get(w.env_var)
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    return _cached(w) if _cached(w).is_file() else None


def _hint(w: Weights) -> str:
    return f"put {w.file} at {_cached(w)}, or set {w.env_var}=/path/to/{w.file} (download: {w.url})"


def resolve(name: str, w: Weights, *, path: str | None = None, download: bool = True) -> Path:
    """The local file of ``w``, downloading it when allowed; else a :class:`ModelLoadError`."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{name}: {path!r} does not exist")
        return p
    env = os.environ.get(w.env_var)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{name}: {w.env_var}={env!r} does not exist")
        return p
    target = _cached(w)
    if target.is_file():
        return target
    offline = os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    if not download or offline:
        why = "download=False" if not download else f"{OFFLINE_ENV} is set"
        raise ModelLoadError(f"{name}: {w.file} is not available locally and {why}; " + _hint(w))
    try:
        _download(w.url, target)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        raise ModelLoadError(f"{name}: could not download {w.url} ({getattr(exc, 'reason', exc)}); " + _hint(w)) from None
    return target
