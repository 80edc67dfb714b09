"""Where the weights of a named EDM network come from (torch-free).

In order: the model's ``path`` option; the environment variable ``DIFFSAMPLER_EDM_<NAME>``
(e.g. ``DIFFSAMPLER_EDM_CIFAR10``); the cache ``$DIFFSAMPLER_CACHE/edm/<file>`` (default cache
``~/.cache/diffsampler``); else a download from ``$DIFFSAMPLER_EDM_BASE_URL`` (default NVIDIA's
CDN) into the cache, unless ``download=False`` or ``DIFFSAMPLER_OFFLINE=1``. The lookup itself is
the core's (:mod:`diffsampler.weights`).
"""

from __future__ import annotations

import os
from pathlib import Path

from diffsampler.weights import CACHE_ENV, OFFLINE_ENV, WeightsFile, cache_dir, locate

from .catalog import BASE_URL, Pretrained

__all__ = ["CACHE_ENV", "OFFLINE_ENV", "URL_ENV", "cache_dir", "resolve_weights", "weights_file"]

URL_ENV = "DIFFSAMPLER_EDM_BASE_URL"


def weights_file(entry: Pretrained) -> WeightsFile:
    base = os.environ.get(URL_ENV, BASE_URL).rstrip("/") + "/"
    return WeightsFile(what=entry.name, file=entry.file, url=base + entry.file,
                       env_var=entry.env_var, subdir="edm")


def resolve_weights(entry: Pretrained, *, path: str | None = None, download: bool = True) -> Path:
    """The local file of ``entry``, downloading it when allowed; else a :class:`ModelLoadError`."""
    return locate(weights_file(entry), path=path, allow_download=download)
