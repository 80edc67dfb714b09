"""Where the weights of a named EDM network come from (torch-free).

In order: the model's ``path`` option; the environment variable ``DIFFSAMPLER_EDM_<NAME>``
(e.g. ``DIFFSAMPLER_EDM_CIFAR10``); the cache ``$DIFFSAMPLER_CACHE/edm/<file>`` (default cache
``~/.cache/diffsampler``); else a download from ``$DIFFSAMPLER_EDM_BASE_URL`` (default NVIDIA's
CDN) into the cache, unless ``download=False`` or ``DIFFSAMPLER_OFFLINE=1``.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from diffsampler.errors import ModelLoadError

from .catalog import BASE_URL, Pretrained

__all__ = ["CACHE_ENV", "OFFLINE_ENV", "URL_ENV", "cache_dir", "resolve_weights"]

CACHE_ENV = "DIFFSAMPLER_CACHE"
OFFLINE_ENV = "DIFFSAMPLER_OFFLINE"
URL_ENV = "DIFFSAMPLER_EDM_BASE_URL"


def cache_dir() -> Path:
    """``$DIFFSAMPLER_CACHE`` or ``~/.cache/diffsampler``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffsampler"


def _where_to_put(entry: Pretrained, target: Path) -> str:
    return (
        f"put {entry.file} at {target}, or set {entry.env_var}=/path/to/{entry.file}, "
        f"or pass the model option path=/path/to/{entry.file} "
        f"(download: {os.environ.get(URL_ENV, BASE_URL)}{entry.file})"
    )


def _download(url: str, target: Path, *, timeout: float = 60.0) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    print(f"diffsampler: downloading {url} -> {target}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def resolve_weights(entry: Pretrained, *, path: str | None = None, download: bool = True) -> Path:
    """The local file of ``entry``, downloading it when allowed; else a :class:`ModelLoadError`."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{entry.name}: path={path!r} does not exist")
        return p
    env = os.environ.get(entry.env_var)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{entry.name}: {entry.env_var}={env!r} does not exist")
        return p
    target = cache_dir() / "edm" / entry.file
    if target.is_file():
        return target
    offline = os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    if not download or offline:
        why = "download=False" if not download else f"{OFFLINE_ENV} is set"
        raise ModelLoadError(
            f"{entry.name}: the network is not available locally and {why}; "
            + _where_to_put(entry, target)
        )
    url = os.environ.get(URL_ENV, BASE_URL).rstrip("/") + "/" + entry.file
    try:
        _download(url, target)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelLoadError(
            f"{entry.name}: could not download {url} ({reason}); " + _where_to_put(entry, target)
        ) from None
    return target
