"""Where the FID Inception weights come from (torch-free).

In order: an explicit path (the metric's ``weights`` option, ``--weights``); the environment
variable ``DIFFSAMPLER_FID_WEIGHTS``; the cache ``$DIFFSAMPLER_CACHE/metrics/<file>`` (default
cache ``~/.cache/diffsampler``); else a download of pytorch-fid's published file into the cache
(urllib), unless ``DIFFSAMPLER_OFFLINE=1``. A download is checked against the SHA-256 prefix in
the file's name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from diffsampler.errors import ModelLoadError

__all__ = ["FID_WEIGHTS_FILE", "FID_WEIGHTS_URL", "WEIGHTS_ENV", "cache_dir", "resolve_fid_weights"]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
)
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "DIFFSAMPLER_FID_WEIGHTS"
CACHE_ENV = "DIFFSAMPLER_CACHE"
OFFLINE_ENV = "DIFFSAMPLER_OFFLINE"


def cache_dir() -> Path:
    """``$DIFFSAMPLER_CACHE`` or ``~/.cache/diffsampler``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffsampler"


def _where_to_put(target: Path) -> str:
    return (
        f"put {FID_WEIGHTS_FILE} at {target}, or set {WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_FILE}, "
        f"or pass weights=/path/to/{FID_WEIGHTS_FILE} (download: {FID_WEIGHTS_URL})"
    )


def _download(url: str, target: Path, *, timeout: float = 60.0) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    print(f"diffsampler: downloading {url} -> {target}", file=sys.stderr)
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(FID_WEIGHTS_SHA256_PREFIX):
            raise ValueError(f"checksum mismatch (sha256 {digest.hexdigest()[:8]}...)")
        shutil.move(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def resolve_fid_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The local Inception weights file, downloading it when allowed; else a :class:`ModelLoadError`."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"FID Inception weights: {str(path)!r} does not exist")
        return p
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"FID Inception weights: {WEIGHTS_ENV}={env!r} does not exist")
        return p
    target = cache_dir() / "metrics" / FID_WEIGHTS_FILE
    if target.is_file():
        return target
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        raise ModelLoadError(
            f"the FID Inception weights are not available locally and {OFFLINE_ENV} is set; "
            + _where_to_put(target)
        )
    try:
        _download(FID_WEIGHTS_URL, target)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelLoadError(
            f"could not download the FID Inception weights ({reason}); " + _where_to_put(target)
        ) from None
    return target
