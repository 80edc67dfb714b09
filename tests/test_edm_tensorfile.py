"""core/tensorfile.py: our safetensors reader/writer against the safetensors package, both ways."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffsampler import tensorfile

safetensors_torch = pytest.importorskip("safetensors.torch")


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
        "f64": torch.randn(5, generator=gen, dtype=torch.float64),
        "half": torch.randn(2, 7, generator=gen).half(),
        "bf16": torch.randn(3, 3, generator=gen).to(torch.bfloat16),
        "ints": torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "bytes": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "strided": torch.randn(6, 6, generator=gen)[::2, 1::2],  # non-contiguous view
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_ours_to_safetensors_package(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "ours.safetensors"
    tensorfile.save_file(_tensors(), path, metadata={"model": "tiny", "note": "ok"})
    _same(safetensors_torch.load_file(path), _tensors())
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"model": "tiny", "note": "ok"}


def test_safetensors_package_to_ours(tmp_path: Path) -> None:
    path = tmp_path / "theirs.safetensors"
    tensors = {k: v.contiguous() for k, v in _tensors().items()}
    safetensors_torch.save_file(tensors, path, metadata={"a": "b"})
    _same(tensorfile.load_file(path), tensors)
    assert tensorfile.read_metadata(path) == {"a": "b"}
    assert tensorfile.load(safetensors_torch.save(tensors)).keys() == tensors.keys()


def test_header_layout(tmp_path: Path) -> None:
    data = tensorfile.save({"b": torch.zeros(3, dtype=torch.float16), "a": torch.ones(2)})
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    assert header["a"] == {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "F16", "shape": [3], "data_offsets": [8, 14]}
    assert len(data) == 8 + n + 14


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: h["a"].update(dtype="F99"), "unsupported dtype"),
        (lambda h: h["a"].update(shape=[3]), "spans 8 bytes"),
        (lambda h: h["a"].update(data_offsets=[0, 400]), "invalid data_offsets"),
        (lambda h: h.update(__metadata__={"k": 1}), "strings to strings"),
        (lambda h: h["b"].update(data_offsets=[0, 8], dtype="F32", shape=[2]), "overlaps or leaves a gap"),
    ],
)
def test_invalid_files_are_refused(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = tensorfile.save({"a": torch.ones(2), "b": torch.zeros(2)})
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    mutate(header)
    text = json.dumps(header).encode()
    bad = struct.pack("<Q", len(text)) + text + data[8 + n :]
    with pytest.raises(tensorfile.TensorFileError, match=message):
        tensorfile.load(bad)


def test_truncated_and_garbage_files() -> None:
    with pytest.raises(tensorfile.TensorFileError, match="too short"):
        tensorfile.load(b"\x01\x02")
    with pytest.raises(tensorfile.TensorFileError, match="header length"):
        tensorfile.load(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(tensorfile.TensorFileError, match="not valid JSON"):
        tensorfile.load(struct.pack("<Q", 4) + b"{{{{")


def test_import_is_torch_free() -> None:
    code = "import sys, diffsampler.tensorfile; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
