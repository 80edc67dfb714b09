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

__all__ = ["is_image_shape", "make_grid", "png_bytes", "read_png", "to_uint8", "write_png"]


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
    Path(path).write_bytes(png_bytes(image))


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an ``[H, W, C]`` (C in 1, 3, 4) or ``[H, W]`` uint8 array as an 8-bit PNG."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"write_png needs uint8 [H, W, 1|3|4], got {arr.dtype} {arr.shape}")
    h, w, c = arr.shape
    colour = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))  # filter type 0 per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth), ``[H, stride]`` bytes out."""
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        else:
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):  # Sub, Average and Paeth depend on the pixel to the left
                left = cur[x - bpp] if x >= bpp else 0
                up = prev[x]
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up) // 2
                elif kind == 4:
                    upleft = prev[x - bpp] if x >= bpp else 0
                    p = left + up - upleft
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
                else:
                    raise ValueError(f"bad PNG filter type {kind}")
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced greyscale/RGB/RGBA PNG into ``[H, W, C]`` uint8.

    Any file it cannot decode is a :class:`ValueError` whose message reads after a file name:
    "not a PNG file", "damaged PNG file (...)" or "unsupported PNG (...)".
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header, ended = 8, [], None, False
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            break
        if tag == b"IHDR" and length == 13:
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            ended = True
            break
        pos += 12 + length
    if header is None:
        raise ValueError("damaged PNG file (no IHDR)" if ended else "damaged PNG file (truncated)")
    if not ended:
        raise ValueError("damaged PNG file (truncated)")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {colour}, interlace {interlace})")
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
        raw = raw.reshape(height, 1 + width * channels)
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"damaged PNG file (pixel data: {exc})") from None
    try:
        pixels = _unfilter(raw, height, width * channels, channels)
    except ValueError as exc:
        raise ValueError(f"damaged PNG file ({exc})") from None
    return pixels.reshape(height, width, channels)
