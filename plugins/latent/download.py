"""Where the seed's LDM checkpoints come from (torch-free).

In order: the model's ``path`` option; its environment variable (e.g.
``DIFFSAMPLER_LDM_LSUN_BEDROOM256``), each either a diffusers folder or a CompVis checkpoint
(``model.ckpt`` or the release zip); the unpacked cache ``$DIFFSAMPLER_CACHE/latent/<zip name>/model.ckpt``;
else the seed's zip (e.g. ``https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip``) is
downloaded into the cache by the core's :func:`diffsampler.weights.locate` (refused with
``download=False`` or ``DIFFSAMPLER_OFFLINE=1``), its ``model.ckpt`` unpacked and the zip removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffsampler.errors import ModelLoadError
from diffsampler.weights import WeightsFile, cache_dir, locate

from .catalog import Named

__all__ = ["cached_checkpoint", "resolve_ldm", "weights_file"]


def weights_file(entry: Named) -> WeightsFile:
    return WeightsFile(what=entry.name, file=entry.seed_url.rsplit("/", 1)[-1], url=entry.seed_url,
                       env_var=entry.env_var, subdir="latent")


def cached_checkpoint(entry: Named) -> Path:
    """Where the unpacked ``model.ckpt`` of ``entry`` lives in the cache."""
    return cache_dir() / "latent" / Path(weights_file(entry).file).stem / "model.ckpt"


def _given(what: str, value: str, label: str) -> str:
    p = Path(value).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{what}: {label}={value!r} does not exist (a CompVis model.ckpt / .zip or "
                             "a diffusers folder)")
    return os.fspath(p)


def resolve_ldm(entry: Named, *, path: str | None = None, download: bool = True) -> str:
    """A diffusers folder or a CompVis checkpoint file for ``entry``; a :class:`ModelLoadError`
    when there is none and it may not be downloaded."""
    if path is not None:
        return _given(entry.name, path, "path")
    env = os.environ.get(entry.env_var)
    if env:
        return _given(entry.name, env, entry.env_var)
    unpacked = cached_checkpoint(entry)
    if unpacked.is_file():
        return os.fspath(unpacked)
    archive = locate(weights_file(entry), allow_download=download)
    from .compvis import extract_zip  # torch from here on

    target = extract_zip(archive, what=entry.name, into=unpacked.parent)
    if archive.parent == cache_dir() / "latent":
        archive.unlink(missing_ok=True)  # our own download: the unpacked checkpoint replaces it
    return os.fspath(target)
