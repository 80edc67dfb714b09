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

__all__ = ["count_images", "iter_images"]

_SUFFIXES = (".png",)


def _npz_images(path: Path) -> np.ndarray:
    with np.load(path) as data:
        if "arr_0" in data:
            images = data["arr_0"]
        elif "samples" in data:
            from .images import to_uint8

            samples = data["samples"]
            if samples.ndim != 4:
                raise OptionError(f"{path}: 'samples' is not an image array ({samples.shape})")
            images = to_uint8(samples)
        else:
            raise OptionError(f"{path}: expected an 'arr_0' (uint8 NHWC) or 'samples' array")
    if images.ndim != 4 or images.dtype != np.uint8:
        raise OptionError(f"{path}: expected uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
    return images


def _names(path: Path) -> list[str]:
    if path.is_dir():
        return sorted(
            str(p.relative_to(path)) for p in path.rglob("*")
            if p.suffix.lower() in _SUFFIXES and not p.name.startswith(".")
        )
    with zipfile.ZipFile(path) as archive:
        return sorted(n for n in archive.namelist() if Path(n).suffix.lower() in _SUFFIXES)


def count_images(path: str | os.PathLike[str]) -> int:
    p = Path(path)
    if p.suffix == ".npz":
        return int(_npz_images(p).shape[0])
    return len(_names(p))


def iter_images(path: str | os.PathLike[str], batch: int = 250) -> Iterator[np.ndarray]:
    """uint8 ``[n, H, W, C]`` batches of the images in a folder, ``.zip`` or ``.npz``."""
    p = Path(path)
    if not p.exists():
        raise OptionError(f"no such image set: {str(p)!r}")
    if p.suffix == ".npz":
        images = _npz_images(p)
        for start in range(0, len(images), batch):
            yield images[start : start + batch]
        return
    if not (p.is_dir() or zipfile.is_zipfile(p)):
        raise OptionError(f"{str(p)!r} is not a folder, a .zip or an .npz of images")
    names = _names(p)
    if not names:
        raise OptionError(f"{str(p)!r} holds no PNG images")
    archive = zipfile.ZipFile(p) if not p.is_dir() else None
    try:
        shape = None
        for start in range(0, len(names), batch):
            chunk = []
            for name in names[start : start + batch]:
                data = archive.read(name) if archive else (p / name).read_bytes()
                image = read_png(data)
                if shape is None:
                    shape = image.shape
                elif image.shape != shape:
                    raise OptionError(f"{name}: image of shape {image.shape}, the set's is {shape}")
                chunk.append(image)
            yield np.stack(chunk)
    finally:
        if archive is not None:
            archive.close()
