"""Where the seed's LDM checkpoints come from (torch-free).

In order: the model's ``path`` option; its environment variable (e.g.
``DIFFSAMPLER_LDM_LSUN_BEDROOM256``), each either a diffusers folder or a CompVis checkpoint
(``model.ckpt`` or the release zip); the unpacked cache ``$DIFFSAMPLER_CACHE/latent/<zip name>/model.ckpt``;
else the seed's zip (e.g. ``https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip``) is
downloaded into the cache by the core's :func:`diffsampler.weights.locate` (refused with
``download=False`` or ``DIFFSAMPLER_OFFLINE=1``), its ``model.ckpt`` unpacked and the zip removed.
The seed's separate VQ-f4 first stage (``vq-f4.zip``, only needed by a checkpoint without
``first_stage_model.*``) is found the same way: ``vq_path``, ``$DIFFSAMPLER_LDM_VQ_F4``, the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffsampler.errors import ModelLoadError
from diffsampler.weights import WeightsFile, cache_dir, locate

from .catalog import VQ_F4_ENV, VQ_F4_URL, Named

__all__ = ["cached_checkpoint", "resolve_ldm", "resolve_vq_f4", "weights_file"]


def weights_file(entry: Named) -> WeightsFile:
    return WeightsFile(what=entry.name, file=entry.seed_url.rsplit("/", 1)[-1], url=entry.seed_url,
                       env_var=entry.env_var, subdir="latent")


def _vq_file(what: str) -> WeightsFile:
    return WeightsFile(what=f"{what} (VQ-f4 first stage)", file="vq-f4.zip", url=VQ_F4_URL, env_var=VQ_F4_ENV,
                       subdir="latent", option="vq_path")


def _unpacked(file: WeightsFile) -> Path:
    return cache_dir() / "latent" / Path(file.file).stem / "model.ckpt"


def cached_checkpoint(entry: Named) -> Path:
    """Where the unpacked ``model.ckpt`` of ``entry`` lives in the cache."""
    return _unpacked(weights_file(entry))


def _given(what: str, value: str, label: str) -> str:
    p = Path(value).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{what}: {label}={value!r} does not exist (a CompVis model.ckpt / .zip or "
                             "a diffusers folder)")
    return os.fspath(p)


def _cached_or_download(file: WeightsFile, download: bool) -> str:
    unpacked = _unpacked(file)
    if unpacked.is_file():
        return os.fspath(unpacked)
    archive = locate(file, allow_download=download)
    from .compvis import extract_zip  # torch from here on

    target = extract_zip(archive, what=file.what, into=unpacked.parent)
    if archive.parent == cache_dir() / "latent":
        archive.unlink(missing_ok=True)  # our own download: the unpacked checkpoint replaces it
    return os.fspath(target)


def resolve_ldm(entry: Named, *, path: str | None = None, download: bool = True) -> str:
    """A diffusers folder or a CompVis checkpoint file for ``entry``; a :class:`ModelLoadError`
    when there is none and it may not be downloaded."""
    if path is not None:
        return _given(entry.name, path, "path")
    env = os.environ.get(entry.env_var)
    if env:
        return _given(entry.name, env, entry.env_var)
    return _cached_or_download(weights_file(entry), download)


def resolve_vq_f4(what: str, *, path: str | None = None, download: bool = True) -> str:
    """The seed's VQ-f4 first-stage checkpoint (``vq_path``, the env var, the cache, a download)."""
    if path is not None:
        return _given(what, path, "vq_path")
    env = os.environ.get(VQ_F4_ENV)
    if env:
        return _given(what, env, VQ_F4_ENV)
    return _cached_or_download(_vq_file(what), download)
