"""Where the FID Inception weights come from (torch-free).

In order: an explicit path (the metric's ``weights`` option, ``--weights``); the environment
variable ``DIFFSAMPLER_FID_WEIGHTS``; the cache ``$DIFFSAMPLER_CACHE/metrics/<file>`` (default
cache ``~/.cache/diffsampler``); else a download of pytorch-fid's published file into the cache,
checked against the SHA-256 prefix in the file's name, unless ``DIFFSAMPLER_OFFLINE=1``. The
lookup itself is the core's (:mod:`diffsampler.weights`).
"""

from __future__ import annotations

import os
from pathlib import Path

from diffsampler.weights import WeightsFile, cache_dir, locate

__all__ = ["FID_WEIGHTS_FILE", "FID_WEIGHTS_URL", "WEIGHTS_ENV", "cache_dir", "resolve_fid_weights"]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
)
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "DIFFSAMPLER_FID_WEIGHTS"

FID_WEIGHTS = WeightsFile(
    what="FID Inception weights", file=FID_WEIGHTS_FILE, url=FID_WEIGHTS_URL, env_var=WEIGHTS_ENV,
    subdir="metrics", option="weights", flag="--weights", sha256_prefix=FID_WEIGHTS_SHA256_PREFIX,
)


def resolve_fid_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The local Inception weights file, downloading it when allowed; else a :class:`ModelLoadError`."""
    return locate(FID_WEIGHTS, path=path)
