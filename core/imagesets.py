"""Read image sets written by diffsampler, EDM or other tools: a folder, a zip, or an npz.

This is the loader metrics (FID, PRDC) consume: it yields uint8 ``[N, H, W, C]`` batches in a
deterministic order (sorted file names; the npz's own order).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import OptionError
from .images import read_png

__all__ = ["check_image_set", "count_images", "image_names", "iter_images", "open_npz"]

_SUFFIXES = (".png",)


def check_image_set(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if it is an image set (a folder, a ``.zip`` or an ``.npz``);
    else an :class:`OptionError` saying what it is not. Reads nothing but the zip directory."""
    p = Path(path)
    if not p.exists():
        raise OptionError(f"no such image set: {str(p)!r}")
    if not (p.is_dir() or p.suffix.lower() == ".npz" or zipfile.is_zipfile(p)):
        raise OptionError(f"{str(p)!r} is not a folder, a .zip or an .npz of images")
    return p


def _is_npz(p: Path) -> bool:
    return p.suffix.lower() == ".npz" and not p.is_dir()


def open_npz(path: str | os.PathLike[str]) -> np.lib.npyio.NpzFile | None:
    """The ``.npz`` at ``path`` opened (close it, e.g. ``with``), or None when the file is not a
    zip of arrays. numpy itself would go on to try a pickle and talk of ``allow_pickle``, which
    is no help to someone who passed the wrong file."""
    try:
        data = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return data if isinstance(data, np.lib.npyio.NpzFile) else None


def _npz_images(path: Path) -> np.ndarray:
    data = open_npz(path)
    if data is None:
        raise OptionError(
            f"{str(path)!r} is not an .npz of images (an 'arr_0' uint8 [N, H, W, C] or 'samples' array)"
        )
    with data:
        if "arr_0" in data:
            images = data["arr_0"]
        elif "samples" in data:
            from .images import to_uint8

            samples = data["samples"]
            if samples.ndim != 4:
                raise OptionError(f"{path}: 'samples' is not an image array ({samples.shape})")
            images = to_uint8(samples)
        elif "mu" in data and "sigma" in data:
            raise OptionError(f"{str(path)!r} holds FID statistics (mu, sigma), not images")
        else:
            raise OptionError(f"{path}: expected an 'arr_0' (uint8 NHWC) or 'samples' array")
    if images.ndim != 4 or images.dtype != np.uint8:
        raise OptionError(f"{path}: expected uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
    return images


def image_names(path: Path) -> list[str]:
    """The PNG names of a folder or .zip in the order the loader reads them (sorted)."""
    if path.is_dir():
        return sorted(
            str(p.relative_to(path)) for p in path.rglob("*")
            if p.suffix.lower() in _SUFFIXES and not p.name.startswith(".")
        )
    with zipfile.ZipFile(path) as archive:
        return sorted(n for n in archive.namelist() if Path(n).suffix.lower() in _SUFFIXES)


def count_images(path: str | os.PathLike[str]) -> int:
    """How many images the set at ``path`` holds (checked as :func:`iter_images` checks it)."""
    p = check_image_set(path)
    if _is_npz(p):
        return int(_npz_images(p).shape[0])
    return len(image_names(p))


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        return read_png(data)
    except ValueError as exc:
        raise OptionError(f"{where}: {exc}") from None


def iter_images(path: str | os.PathLike[str], batch: int = 250) -> Iterator[np.ndarray]:
    """uint8 ``[n, H, W, C]`` batches of the images in a folder, ``.zip`` or ``.npz``."""
    p = check_image_set(path)
    if _is_npz(p):
        images = _npz_images(p)
        for start in range(0, len(images), batch):
            yield images[start : start + batch]
        return
    names = image_names(p)
    if not names:
        raise OptionError(f"{str(p)!r} holds no PNG images")
    archive = zipfile.ZipFile(p) if not p.is_dir() else None
    try:
        shape = None
        for start in range(0, len(names), batch):
            chunk = []
            for name in names[start : start + batch]:
                where = f"{name} (in {p})" if archive is not None else str(p / name)
                data = archive.read(name) if archive is not None else (p / name).read_bytes()
                image = _decode(data, where)
                if shape is None:
                    shape = image.shape
                elif image.shape != shape:
                    raise OptionError(f"{where}: image of shape {image.shape}, the set's is {shape}")
                chunk.append(image)
            yield np.stack(chunk)
    finally:
        if archive is not None:
            archive.close()
