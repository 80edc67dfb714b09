"""Read and write the safetensors file format for torch tensors, with no extra dependency.

The format (https://github.com/huggingface/safetensors, "Format" section):

* 8 bytes: ``N``, the length of the header, an unsigned little-endian 64-bit integer;
* ``N`` bytes: a UTF-8 JSON object mapping each tensor name to
  ``{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}`` plus an optional
  ``"__metadata__"`` object of string to string; writers pad it with spaces to a multiple of 8;
* the byte buffer: every tensor's elements, C-contiguous and little-endian, at
  ``data_offsets`` relative to the start of the buffer. Tensors do not overlap and together
  cover the buffer exactly.

Files written here load with the ``safetensors`` package and the other way round. This module
does not import torch until a function runs, so ``import diffsampler`` stays torch-free.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "TensorFileError",
    "load",
    "load_file",
    "read_header",
    "read_metadata",
    "save",
    "save_file",
]

MAX_HEADER_BYTES = 100_000_000
"""Largest header accepted (the limit the safetensors package uses)."""

# safetensors dtype code -> (torch dtype attribute, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "C64": ("complex64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F64": ("float64", 8),
}


class TensorFileError(ModelLoadError):
    """A file that is not a valid safetensors file (or a tensor that cannot be written)."""


def _torch_dtype(code: str) -> torch.dtype:
    import torch

    try:
        name, _ = DTYPES[code]
    except KeyError:
        raise TensorFileError(f"unsupported safetensors dtype {code!r}") from None
    dtype = getattr(torch, name, None)
    if dtype is None:  # pragma: no cover - old torch without e.g. uint16
        raise TensorFileError(f"this torch has no dtype for safetensors {code!r}")
    return dtype


def _code_of(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    for code, (torch_name, _) in DTYPES.items():
        if torch_name == name:
            return code
    raise TensorFileError(f"safetensors cannot store dtype {dtype}")


# -- reading ----------------------------------------------------------------------------------
def _parse_header(data: bytes | memoryview, where: str) -> tuple[dict[str, Any], int]:
    """The header dict and the offset of the byte buffer, validated."""
    if len(data) < 8:
        raise TensorFileError(f"{where}: too short for a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise TensorFileError(f"{where}: invalid safetensors header length {n}")
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFileError(f"{where}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{where}: safetensors header must be a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise TensorFileError(f"{where}: __metadata__ must map strings to strings")
    buffer_len = len(data) - 8 - n
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise TensorFileError(f"{where}: malformed entry for tensor {name!r}")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in DTYPES:
            raise TensorFileError(f"{where}: tensor {name!r} has unsupported dtype {code!r}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise TensorFileError(f"{where}: tensor {name!r} has invalid shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= buffer_len
        ):
            raise TensorFileError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")
        expected = math.prod(shape) * DTYPES[code][1]
        if offsets[1] - offsets[0] != expected:
            raise TensorFileError(
                f"{where}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes, "
                f"its dtype and shape need {expected}"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise TensorFileError(f"{where}: tensor {name!r} overlaps or leaves a gap in the buffer")
        end = stop
    if end != buffer_len:
        raise TensorFileError(f"{where}: the tensors do not cover the byte buffer exactly")
    return header, 8 + n


def _tensor_from(
    data: memoryview, begin: int, end: int, code: str, shape: list[int]
) -> torch.Tensor:
    import torch

    dtype = _torch_dtype(code)
    if begin == end:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8)  # an owned copy
    if sys.byteorder == "big":  # pragma: no cover - the format is little-endian
        raw = raw.reshape(-1, DTYPES[code][1]).flip(-1).reshape(-1)
    return raw.view(dtype).reshape(shape)


def load(data: bytes | bytearray | memoryview, *, where: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Tensors (CPU, in file order of their data) from the bytes of a safetensors file."""
    view = memoryview(data)
    header, base = _parse_header(view, where)
    out = {}
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    entries.sort(key=lambda kv: kv[1]["data_offsets"][0])
    for name, entry in entries:
        begin, end = entry["data_offsets"]
        out[name] = _tensor_from(view, base + begin, base + end, entry["dtype"], entry["shape"])
    return out


def load_file(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on ``device``."""
    with open(path, "rb") as f:
        data = f.read()
    tensors = load(data, where=os.fspath(path))
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries and ``__metadata__``), validated."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TensorFileError(f"{os.fspath(path)}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise TensorFileError(f"{os.fspath(path)}: invalid safetensors header length {n}")
        f.seek(0)
        data = f.read()
    header, _ = _parse_header(memoryview(data), os.fspath(path))
    return header


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (``{}`` when absent)."""
    return dict(read_header(path).get("__metadata__") or {})


# -- writing ----------------------------------------------------------------------------------
def save(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (copied to CPU, made contiguous).

    Tensors are laid out by decreasing element size, then by name, so every tensor's data is
    aligned to its element size (as the safetensors package does).
    """
    import torch

    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TensorFileError("safetensors metadata must map strings to strings")
    items = []
    for name, tensor in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise TensorFileError(f"invalid tensor name {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TensorFileError(f"{name!r} is not a tensor but {type(tensor).__name__}")
        if tensor.layout != torch.strided:
            raise TensorFileError(f"tensor {name!r}: only dense tensors can be stored")
        items.append((name, tensor.detach(), _code_of(tensor.dtype)))
    items.sort(key=lambda item: (-DTYPES[item[2]][1], item[0]))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name, tensor, code in items:
        flat = tensor.to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        if sys.byteorder == "big" and DTYPES[code][1] > 1:  # pragma: no cover
            raw = raw.reshape(-1, DTYPES[code][1]).flip(-1).reshape(-1)
        blob = raw.numpy().tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        chunks.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save_file(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` as a safetensors file (atomically: temp file, rename)."""
    data = save(tensors, metadata)
    target = os.fspath(path)
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
