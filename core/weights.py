"""Where a plugin's weight files come from: one lookup for every model and metric (torch-free).

In order: an explicit path (a model or metric option); the file's own environment variable; the
cache ``$DIFFSAMPLER_CACHE/<subdir>/<file>`` (default cache ``~/.cache/diffsampler``); else a
download (urllib) into the cache — written under a temporary name and renamed, optionally
checked against a SHA-256 prefix — unless ``download=False`` or ``DIFFSAMPLER_OFFLINE=1``.
Every failure is one :class:`~diffsampler.errors.ModelLoadError` that says where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import attrs

from .errors import ModelLoadError

__all__ = ["CACHE_ENV", "OFFLINE_ENV", "WeightsFile", "cache_dir", "download", "locate", "offline"]

CACHE_ENV = "DIFFSAMPLER_CACHE"
OFFLINE_ENV = "DIFFSAMPLER_OFFLINE"


def cache_dir() -> Path:
    """``$DIFFSAMPLER_CACHE`` or ``~/.cache/diffsampler``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffsampler"


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@attrs.frozen(kw_only=True)
class WeightsFile:
    """A published weights file: its name, its URL, its environment variable, its cache folder."""

    what: str  # how errors name it, e.g. "edm-cifar10"
    file: str
    url: str
    env_var: str
    subdir: str
    option: str = "path"  # the option a user passes a local copy with
    flag: str | None = None  # the command-line flag for it, where a command has one (e.g. "--weights")
    sha256_prefix: str | None = None

    @property
    def cached(self) -> Path:
        return cache_dir() / self.subdir / self.file

    def hint(self) -> str:
        local = f"/path/to/{self.file}"
        passed = (
            f"{self.flag} {local} (Python and metric options: {self.option}=PATH)" if self.flag
            else f"{self.option}={local}"
        )
        return (
            f"put {self.file} at {self.cached}, or set {self.env_var}={local}, "
            f"or pass {passed} (download: {self.url})"
        )

    def local_copy(self) -> Path | None:
        """The environment variable's file or the cached file, when present (no download)."""
        env = os.environ.get(self.env_var)
        if env and Path(env).expanduser().is_file():
            return Path(env).expanduser()
        return self.cached if self.cached.is_file() else None


def download(url: str, target: Path, *, sha256_prefix: str | None = None, timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``target`` atomically (a ``.part`` file renamed when complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    print(f"diffsampler: downloading {url} -> {target}", file=sys.stderr)
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise ValueError(f"checksum mismatch (sha256 {digest.hexdigest()[:8]}...)")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def locate(weights: WeightsFile, *, path: str | os.PathLike[str] | None = None, allow_download: bool = True) -> Path:
    """The local file of ``weights``, downloading it when allowed; else a :class:`ModelLoadError`."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{weights.what}: {weights.option}={str(path)!r} does not exist")
        return p
    env = os.environ.get(weights.env_var)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{weights.what}: {weights.env_var}={env!r} does not exist")
        return p
    target = weights.cached
    if target.is_file():
        return target
    if not allow_download or offline():
        why = "download=False" if not allow_download else f"{OFFLINE_ENV} is set"
        raise ModelLoadError(
            f"{weights.what}: {weights.file} is not available locally and {why}; " + weights.hint()
        )
    try:
        download(weights.url, target, sha256_prefix=weights.sha256_prefix)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelLoadError(
            f"{weights.what}: could not download {weights.url} ({reason}); " + weights.hint()
        ) from None
    return target
