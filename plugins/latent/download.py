"""Where the seed's LDM checkpoints come from (torch-free).

In order: the model's ``path`` option; its environment variable (e.g.
``DIFFSAMPLER_LDM_LSUN_BEDROOM256``), each either a diffusers folder or a CompVis checkpoint
(``model.ckpt`` or the release zip); the unpacked cache ``$DIFFSAMPLER_CACHE/latent/<zip name>/model.ckpt``;
else the seed's zip (e.g. ``https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip``) is
downloaded into the cache by the core's :func:`diffsampler.weights.locate` (refused with
``download=False`` or ``DIFFSAMPLER_OFFLINE=1``), its ``model.ckpt`` unpacked and the downloaded zip
removed (a zip the user placed at that cache path is unpacked and kept).
The seed's separate VQ-f4 first stage (``vq-f4.zip``, only needed by a checkpoint without
``first_stage_model.*``) is found the same way: ``vq_path``, ``$DIFFSAMPLER_LDM_VQ_F4``, the cache.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from diffsampler.errors import ModelLoadError
from diffsampler.weights import WeightsFile, cache_dir, locate

from .catalog import VQ_F4_ENV, VQ_F4_URL, Named

__all__ = ["CHECKPOINT_SUFFIXES", "cached_archive", "cached_checkpoint", "checkpoint_in", "is_compvis_checkpoint",
           "resolve_ldm", "resolve_vq_f4", "weights_file"]

#: Suffixes that make a missing ``path`` a missing checkpoint file, never a hub id or folder.
CHECKPOINT_SUFFIXES = (".ckpt", ".zip", ".pt", ".pth", ".safetensors", ".yaml", ".yml")


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


def cached_archive(entry: Named) -> Path:
    """Where a user may place the seed's release zip of ``entry`` in the cache."""
    return cache_dir() / "latent" / weights_file(entry).file


def _is_diffusers(folder: Path) -> bool:
    return (folder / "unet").is_dir() and (folder / "scheduler").is_dir()


def checkpoint_in(source: str | os.PathLike[str]) -> Path | None:
    """The CompVis checkpoint ``source`` names: the file itself, or the ``model.ckpt`` in a folder
    that is no diffusers folder (where the seed's download script leaves it); else ``None``."""
    p = Path(source).expanduser()
    if p.is_file():
        return p
    if p.is_dir() and not _is_diffusers(p) and (p / "model.ckpt").is_file():
        return p / "model.ckpt"
    return None


def _torch_zip_pickle(zf: zipfile.ZipFile) -> bytes | None:
    names = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    return zf.read(names[0]) if len(names) == 1 else None


def is_compvis_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (torch-free, without unpickling) looks like a CompVis LDM checkpoint: a
    release zip holding one ``model.ckpt``, or a ``.ckpt`` whose pickle names
    ``model.diffusion_model.*`` weights (or such a folder, see :func:`checkpoint_in`)."""
    found = checkpoint_in(path)
    if found is None or found.suffix.lower() not in (".ckpt", ".zip"):
        return False
    try:
        if zipfile.is_zipfile(found):
            with zipfile.ZipFile(found) as zf:
                data = _torch_zip_pickle(zf)
                if data is None:
                    return sum(Path(n).name == "model.ckpt" for n in zf.namelist()) == 1
                return b"model.diffusion_model." in data
        with open(found, "rb") as f:  # torch's legacy format: the keys come before the storages
            return b"model.diffusion_model." in f.read(1 << 22)
    except (OSError, zipfile.BadZipFile):
        return False


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
    placed = (cache_dir() / "latent" / file.file).is_file()  # a zip the user put there is kept
    archive = locate(file, allow_download=download)
    from .compvis import extract_zip  # torch from here on

    target = extract_zip(archive, what=file.what, into=unpacked.parent)
    if not placed and archive.parent == cache_dir() / "latent":
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
