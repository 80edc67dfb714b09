"""Samples to images: uint8 conversion, grids, and a dependency-free PNG writer."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["is_image_shape", "make_grid", "to_uint8", "write_png"]


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """``(C, H, W)`` with 1, 3 or 4 channels."""
    return len(shape) == 3 and shape[0] in (1, 3, 4)


def to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` samples in ``[-1, 1]`` to ``[N, H, W, C]`` uint8, as EDM writes images."""
    arr = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    arr = np.clip(np.asarray(arr, dtype=np.float32) * 127.5 + 128.0, 0, 255).astype(np.uint8)
    return arr.transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``[N, H, W, C]`` uint8 images into one ``[H', W', C]`` image (near-square)."""
    n, h, w, c = images.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[k]
    return grid


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an ``[H, W, C]`` (C in 1, 3, 4) or ``[H, W]`` uint8 array as an 8-bit PNG."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"write_png needs uint8 [H, W, 1|3|4], got {arr.dtype} {arr.shape}")
    h, w, c = arr.shape
    colour = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))  # filter type 0 per row
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )
    Path(path).write_bytes(data)
