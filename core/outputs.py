"""Where a run's samples go: formats, atomic writes, and resuming without loss.

Every file is written under a temporary name and renamed into place, so a run killed at any
moment leaves complete files or none. A run directory holds ``config.json`` (the resolved run
record, written before sampling starts); rerunning the same command skips the batches whose
output is already there, and a different configuration in the same directory is refused.

Formats (``--format``):

- ``npz``: ``samples.npz`` with ``samples`` (float32, model space), ``seeds``, and for images
  ``arr_0`` (uint8 ``[N, H, W, C]``, the layout of guided-diffusion/clean-fid npz batches).
- ``png``: one PNG per seed in EDM's layout, ``000000/000123.png`` (subfolders of 1,000).
- ``zip``: ``images.zip`` with the same PNG layout (what EDM's ``fid.py`` and dataset tool read).
- ``grid``: only ``grid.png``.

For ``npz`` and ``zip``, ``grid.png`` previews the first batch (up to 64 samples).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import OptionError
from .images import is_image_shape, make_grid, to_uint8, write_png
from .seeds import Batch

__all__ = ["FORMATS", "RunDirectory", "atomic_write_bytes", "check_output_file", "png_name"]

PREVIEW = 64


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def png_name(seed: int) -> str:
    """EDM's layout: ``{seed - seed % 1000:06d}/{seed:06d}.png``."""
    return f"{seed - seed % 1000:06d}/{seed:06d}.png"


class _Format:
    name: ClassVar[str]
    needs_image: ClassVar[bool] = False
    uses_parts: ClassVar[bool] = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts = root / ".parts"

    def final_paths(self) -> list[Path]:
        raise NotImplementedError

    def part_path(self, batch: Batch) -> Path:
        return self.parts / f"batch-{batch.index:06d}.npz"

    def done(self, batch: Batch) -> bool:
        return self.part_path(batch).exists()

    def write(self, batch: Batch, x: np.ndarray) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.part_path(batch), _npz_bytes(samples=x, seeds=np.array(batch.seeds)))

    def read_parts(self, batches: Sequence[Batch]) -> tuple[np.ndarray, np.ndarray]:
        samples, seeds = [], []
        for batch in batches:
            with np.load(self.part_path(batch)) as part:
                samples.append(part["samples"])
                seeds.append(part["seeds"])
        return np.concatenate(samples), np.concatenate(seeds)

    def finish(self, batches: Sequence[Batch]) -> list[str]:
        raise NotImplementedError

    def record_labels(self, labels: Mapping[int, int]) -> list[str]:
        """EDM's ``dataset.json`` (``{"labels": [[file, class], ...]}``) beside PNG outputs."""
        rows = [[png_name(seed), label] for seed, label in sorted(labels.items())]
        atomic_write_bytes(self.root / "dataset.json", json.dumps({"labels": rows}).encode())
        return ["dataset.json"]

    def clean_parts(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)


class _Npz(_Format):
    name = "npz"

    def record_labels(self, labels: Mapping[int, int]) -> list[str]:
        path = self.root / "samples.npz"
        with np.load(path) as data:
            arrays = dict(data)
        arrays["labels"] = np.array([labels[int(s)] for s in arrays["seeds"]], dtype=np.int64)
        atomic_write_bytes(path, _npz_bytes(**arrays))
        return []

    def final_paths(self) -> list[Path]:
        return [self.root / "samples.npz"]

    def finish(self, batches: Sequence[Batch]) -> list[str]:
        x, seeds = self.read_parts(batches)
        arrays = {"samples": x, "seeds": seeds}
        if is_image_shape(tuple(x.shape[1:])):
            arrays["arr_0"] = to_uint8(x)
        atomic_write_bytes(self.root / "samples.npz", _npz_bytes(**arrays))
        self.clean_parts()
        return ["samples.npz"]


class _Zip(_Format):
    name = "zip"
    needs_image = True

    def final_paths(self) -> list[Path]:
        return [self.root / "images.zip"]

    def finish(self, batches: Sequence[Batch]) -> list[str]:
        from .images import png_bytes

        x, seeds = self.read_parts(batches)
        tmp = self.root / f".images.zip.tmp-{os.getpid()}"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for seed, image in zip(seeds.tolist(), to_uint8(x), strict=True):
                archive.writestr(png_name(seed), png_bytes(image))
        os.replace(tmp, self.root / "images.zip")
        self.clean_parts()
        return ["images.zip"]


class _Grid(_Format):
    name = "grid"
    needs_image = True

    def final_paths(self) -> list[Path]:
        return [self.root / "grid.png"]

    def finish(self, batches: Sequence[Batch]) -> list[str]:
        x, _ = self.read_parts(batches)
        write_png(self.root / "grid.png", make_grid(to_uint8(x)))
        self.clean_parts()
        return ["grid.png"]


class _Png(_Format):
    name = "png"
    needs_image = True
    uses_parts = False

    def final_paths(self) -> list[Path]:
        return []

    def done(self, batch: Batch) -> bool:
        return all((self.root / png_name(s)).exists() for s in batch.seeds)

    def write(self, batch: Batch, x: np.ndarray) -> None:
        from .images import png_bytes

        for seed, image in zip(batch.seeds, to_uint8(x), strict=True):
            path = self.root / png_name(seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, png_bytes(image))

    def finish(self, batches: Sequence[Batch]) -> list[str]:
        return [f"{sum(len(b.seeds) for b in batches)} PNG files"]


FORMATS: dict[str, type[_Format]] = {f.name: f for f in (_Npz, _Png, _Zip, _Grid)}


class RunDirectory:
    """A run's output directory: its record, its format, what is done and what is left."""

    def __init__(self, root: str | os.PathLike[str], fmt: str, sample_shape: Sequence[int]) -> None:
        if fmt not in FORMATS:
            raise OptionError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.root = Path(root)
        self.format = FORMATS[fmt](self.root)
        self.image = is_image_shape(tuple(sample_shape))
        if self.format.needs_image and not self.image:
            raise OptionError(
                f"format {fmt!r} needs image-shaped samples (C, H, W); these are "
                f"{tuple(sample_shape)}: use --format npz"
            )

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def prepare(self, record: dict[str, Any], *, main: bool = True) -> bool:
        """Create the directory and claim it for ``record``; True if resuming an earlier run.

        Refuses a directory that holds a run with a different configuration.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OptionError(
                f"cannot write to output directory {str(self.root)!r}: {exc.strerror}"
            ) from None
        if self.config_path.exists():
            try:
                earlier = json.loads(self.config_path.read_text())
            except (OSError, json.JSONDecodeError):
                raise OptionError(f"{self.config_path} is unreadable; remove it or use another --out") from None
            now = json.loads(json.dumps(record["config"]))  # as it would be on disk (tuples -> lists)
            differences = _differences(earlier.get("config", {}), now)
            if earlier.get("format") != self.format.name:
                differences.insert(0, f"format: {earlier.get('format')!r} on disk, {self.format.name!r} now")
            if differences:
                raise OptionError(
                    f"{self.root} holds a different run ({'; '.join(differences[:3])}); "
                    "use another --out, or delete it to start over"
                )
            return True
        if main:
            atomic_write_bytes(
                self.config_path,
                (json.dumps({**record, "format": self.format.name, "complete": False}, indent=2) + "\n").encode(),
            )
        return False

    def complete(self) -> bool:
        if not self.config_path.exists():
            return False
        return bool(json.loads(self.config_path.read_text()).get("complete"))

    def pending(self, batches: Iterable[Batch]) -> list[Batch]:
        if self.complete():
            return []
        return [b for b in batches if not self.format.done(b)]

    def write(self, batch: Batch, x: np.ndarray) -> None:
        """Store one finished batch (atomically); batch 0 also writes the preview grid."""
        self.format.write(batch, x)
        # No preview inside a PNG folder: FID tools would count it as a sample.
        if batch.index == 0 and self.image and self.format.name in ("npz", "zip"):
            write_png(self.root / "grid.png", make_grid(to_uint8(x[:PREVIEW])))

    def finish(
        self, batches: Sequence[Batch], extra: dict[str, Any], labels: Mapping[int, int] | None = None
    ) -> list[str]:
        """Assemble the final files from the batches (main rank, after all are written).

        ``labels`` (seed -> class) are recorded: a ``labels`` array in ``samples.npz``, EDM's
        ``dataset.json`` beside PNG folders and zips.
        """
        if self.complete():
            return [p.name for p in self.format.final_paths()]
        missing = [b.index for b in batches if not self.format.done(b)]
        if missing:
            raise OptionError(f"cannot finish: batches {missing[:5]} are missing")
        written = self.format.finish(batches)
        if labels is not None and self.format.name != "grid":
            written += self.format.record_labels(labels)
        record = json.loads(self.config_path.read_text())
        record.update(extra)
        record["complete"] = True
        atomic_write_bytes(self.config_path, (json.dumps(record, indent=2) + "\n").encode())
        preview = ["grid.png (preview)"] if self.format.name != "grid" and (self.root / "grid.png").exists() else []
        return [*written, *preview, "config.json"]

    def remove_stale_temporaries(self) -> None:
        for tmp in self.root.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        if key in ("device", "compile", "cuda_graph", "cudnn_benchmark"):  # how, not what: the same samples, another way
            continue
        if before.get(key) != now.get(key):
            out.append(f"{key}: {before.get(key)!r} on disk, {now.get(key)!r} now")
    return out


def check_output_file(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing folder, or a
    parent that exists but is not a writable folder. A missing parent folder is created."""
    out = Path(path)
    if out.is_dir():
        raise OptionError(f"{flag} {str(out)!r} is a folder; give a file name")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise OptionError(f"{flag} {str(out)!r}: {str(parent)!r} is not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{flag} {str(out)!r}: cannot create its folder ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise OptionError(f"{flag} {str(out)!r}: the folder {str(parent)!r} is not writable")
    return out
