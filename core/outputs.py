"""Where a run's samples go: formats, atomic writes, and resuming without loss.

Every file is written under a temporary name and renamed into place, so a run killed at any
moment leaves complete files or none. A run directory holds ``config.json`` (the resolved run
record, written before sampling starts); rerunning the same command skips the batches whose
output is already there, and a different configuration in the same directory is refused.

Formats (``--format``):

- ``npz``: ``samples.npz`` with ``samples`` (float32, model space), ``seeds``, and for images
  ``arr_0`` (uint8 ``[N, H, W, C]``, the layout of guided-diffusion/clean-fid npz batches).
- ``png``: one PNG per seed in EDM's layout, ``000000/000123.png`` (subfolders of 1,000).
- ``zip``: ``images.zip`` with the same PNG layout (what EDM's ``fid.py`` and dataset tool read);
  class labels go inside it, as EDM's ``dataset.json``.
- ``grid``: only ``grid.png``.

For ``npz`` and ``zip``, ``grid.png`` previews the first batch (up to 64 samples).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import jsontext
from .errors import OptionError
from .images import is_image_shape, make_grid, to_uint8, write_png
from .seeds import Batch, format_seeds

__all__ = ["FORMATS", "RunDirectory", "atomic_write_bytes", "check_output_file", "check_output_folder", "png_name"]

PREVIEW = 64
#: the longest value a "holds a different run" message shows
_SHOWN = 80
#: what a damaged ``.parts`` file raises when read (truncated, overwritten, not an npz)
_DAMAGED = (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


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
        """The batch's part exists and is readable: a damaged part counts as not done."""
        path = self.part_path(batch)
        if not path.exists():
            return False
        try:  # the zip directory and the seeds (small); the samples are read when assembling
            with np.load(path) as part:
                return "samples" in part.files and tuple(part["seeds"].tolist()) == batch.seeds
        except _DAMAGED:
            return False

    def write(self, batch: Batch, x: np.ndarray) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.part_path(batch), _npz_bytes(samples=x, seeds=np.array(batch.seeds)))

    def read_parts(self, batches: Sequence[Batch]) -> tuple[np.ndarray, np.ndarray]:
        samples, seeds = [], []
        for batch in batches:
            path = self.part_path(batch)
            try:
                with np.load(path) as part:
                    samples.append(part["samples"])
                    seeds.append(part["seeds"])
            except _DAMAGED:  # damaged after planning checked it (a bad block, say)
                path.unlink(missing_ok=True)
                raise OptionError(
                    f"{path} was damaged and has been removed; rerun the same command to "
                    f"sample batch {batch.index} again"
                ) from None
        return np.concatenate(samples), np.concatenate(seeds)

    def finish(self, batches: Sequence[Batch], labels: Mapping[int, int] | None = None) -> list[str]:
        """Assemble the final files (and record ``labels``, seed -> class); their names."""
        raise NotImplementedError

    def label_paths(self) -> list[Path]:
        """Files beside the samples that hold the labels of a labelled run."""
        return []

    def damaged(self, count: int) -> list[Path]:
        """Final files that exist but cannot hold ``count`` samples (truncated, overwritten,
        another run's). Checks structure and sizes, never reads the whole samples."""
        return []

    def clean_parts(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)


class _Npz(_Format):
    name = "npz"

    def final_paths(self) -> list[Path]:
        return [self.root / "samples.npz"]

    def finish(self, batches: Sequence[Batch], labels: Mapping[int, int] | None = None) -> list[str]:
        x, seeds = self.read_parts(batches)
        arrays = {"samples": x, "seeds": seeds}
        if is_image_shape(tuple(x.shape[1:])):
            arrays["arr_0"] = to_uint8(x)
        if labels is not None:
            arrays["labels"] = np.array([labels[int(s)] for s in seeds], dtype=np.int64)
        atomic_write_bytes(self.root / "samples.npz", _npz_bytes(**arrays))
        self.clean_parts()
        return ["samples.npz"]

    def damaged(self, count: int) -> list[Path]:
        def holds(archive: zipfile.ZipFile) -> bool:
            if "samples.npy" not in archive.namelist():
                return False
            with archive.open("samples.npy") as member:  # the array's header only
                major, _ = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(member)
            return bool(shape[:1] == (count,))

        return _damaged_zip(self.root / "samples.npz", holds)


class _Zip(_Format):
    name = "zip"
    needs_image = True

    def final_paths(self) -> list[Path]:
        return [self.root / "images.zip"]

    def finish(self, batches: Sequence[Batch], labels: Mapping[int, int] | None = None) -> list[str]:
        from .images import png_bytes

        x, seeds = self.read_parts(batches)
        tmp = self.root / f".images.zip.tmp-{os.getpid()}"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for seed, image in zip(seeds.tolist(), to_uint8(x), strict=True):
                archive.writestr(png_name(seed), png_bytes(image))
            if labels is not None:
                archive.writestr("dataset.json", _dataset_json(labels))
        os.replace(tmp, self.root / "images.zip")
        self.clean_parts()
        return ["images.zip"]

    def damaged(self, count: int) -> list[Path]:
        return _damaged_zip(self.root / "images.zip",
                            lambda archive: sum(n.endswith(".png") for n in archive.namelist()) == count)


class _Grid(_Format):
    name = "grid"
    needs_image = True

    def final_paths(self) -> list[Path]:
        return [self.root / "grid.png"]

    def finish(self, batches: Sequence[Batch], labels: Mapping[int, int] | None = None) -> list[str]:
        x, _ = self.read_parts(batches)
        write_png(self.root / "grid.png", make_grid(to_uint8(x)))
        self.clean_parts()
        return ["grid.png"]

    def damaged(self, count: int) -> list[Path]:
        path = self.root / "grid.png"
        if not path.exists():
            return []
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(path.stat().st_size - 12, 0))
            tail = f.read()
        return [] if head == _PNG_SIGNATURE and tail[4:] == _PNG_END else [path]


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

    def label_paths(self) -> list[Path]:
        return [self.root / "dataset.json"]

    def finish(self, batches: Sequence[Batch], labels: Mapping[int, int] | None = None) -> list[str]:
        written = [f"{sum(len(b.seeds) for b in batches)} PNG files"]
        if labels is not None:  # EDM's dataset.json beside the folders
            atomic_write_bytes(self.root / "dataset.json", _dataset_json(labels))
            written.append("dataset.json")
        return written


def _damaged_zip(path: Path, holds: Callable[[zipfile.ZipFile], bool]) -> list[Path]:
    """``[path]`` when the zip (``.npz``) at ``path`` exists but is unreadable, cut short, or does
    not ``hold`` what it should; ``[]`` when it is fine or absent."""
    if not path.exists():
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return [] if _members_fit(path, archive) and holds(archive) else [path]
    except _DAMAGED:
        return [path]


def _members_fit(path: Path, archive: zipfile.ZipFile) -> bool:
    """Every member's data lies inside the file (a zip cut short keeps a readable directory
    only if the cut fell in the data, which this catches)."""
    size = path.stat().st_size
    return all(info.header_offset + info.compress_size <= size for info in archive.infolist())


def _dataset_json(labels: Mapping[int, int]) -> bytes:
    """EDM's ``dataset.json``: ``{"labels": [["000000/000003.png", 9], ...]}``."""
    rows = [[png_name(seed), label] for seed, label in sorted(labels.items())]
    return json.dumps({"labels": rows}).encode()


FORMATS: dict[str, type[_Format]] = {f.name: f for f in (_Npz, _Png, _Zip, _Grid)}


class RunDirectory:
    """A run's output directory: its record, its format, what is done and what is left."""

    def __init__(self, root: str | os.PathLike[str], fmt: str, sample_shape: Sequence[int]) -> None:
        if fmt not in FORMATS:
            raise OptionError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.root = Path(root)
        self.format = FORMATS[fmt](self.root)
        self.image = is_image_shape(tuple(sample_shape))
        #: what :meth:`prepare` replaced: the differences from an earlier run that had no sample
        self.replaced: list[str] = []
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

        Refuses a directory that holds a run with a different configuration, unless that run
        left no sample at all (an attempt that failed before its first batch): then ``record``
        takes its place and :attr:`replaced` lists what changed.
        """
        self._check_writable()
        if self.config_path.exists():
            differences = self._differences_from(self._read_record(), record)
            if not differences:
                return True
            if self._recorded_complete() or self._holds_samples():
                raise OptionError(
                    f"{self.root} holds a different run ({'; '.join(differences[:3])}); "
                    "use another --out, or delete it to start over"
                )
            self.replaced = differences
        if main:
            self._write_record({**record, "format": self.format.name, "complete": False})
        return False

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OptionError(
                f"cannot write to output directory {str(self.root)!r}: {exc.strerror}"
            ) from None

    def _read_record(self) -> dict[str, Any]:
        try:
            record = json.loads(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict):
            raise OptionError(f"{self.config_path} is unreadable; remove it or use another --out")
        return record

    def _write_record(self, record: dict[str, Any]) -> None:
        atomic_write_bytes(self.config_path, (jsontext.dumps(record) + "\n").encode())

    def _differences_from(self, earlier: dict[str, Any], record: dict[str, Any]) -> list[str]:
        now = json.loads(json.dumps(record["config"]))  # as it would be on disk (tuples -> lists)
        differences = _differences(earlier.get("config", {}), now)
        if earlier.get("format") != self.format.name:
            differences.insert(0, f"format: {earlier.get('format')!r} on disk, {self.format.name!r} now")
        return differences

    def _holds_samples(self) -> bool:
        """Whether any format's samples, parts or PNG subfolders are here (finished work)."""
        finals = [p for f in FORMATS.values() for p in f(self.root).final_paths()]
        return any(p.exists() for p in finals) or any(
            True for pattern in (".parts/batch-*.npz", "[0-9][0-9][0-9][0-9][0-9][0-9]/*.png")
            for _ in self.root.glob(pattern)
        )

    def _recorded_complete(self) -> bool:
        if not self.config_path.exists():
            return False
        return bool(self._read_record().get("complete"))

    def missing_outputs(self, batches: Sequence[Batch]) -> list[str]:
        """What a run recorded complete has lost since (deleted, moved or damaged samples)."""
        if not self._recorded_complete():
            return []
        config = self._read_record().get("config", {})
        labelled = config.get("labels") is not None
        paths = self.format.final_paths() + (self.format.label_paths() if labelled else [])
        missing = [p.name for p in paths if not p.exists()]
        missing += [f"{p.name} (damaged)" for p in self.format.damaged(len(config.get("seeds", [])))]
        if not self.format.uses_parts:
            lost = sum(not (self.root / png_name(s)).exists() for b in batches for s in b.seeds)
            missing += [f"{lost} PNG file{'s' if lost != 1 else ''}"] if lost else []
        return missing

    def reopen(self, batches: Sequence[Batch]) -> list[str]:
        """Mark a complete run whose outputs went missing as incomplete again (main rank), so
        that a rerun samples what is missing; returns what is missing."""
        missing = self.missing_outputs(batches)
        if missing:
            self._write_record({**self._read_record(), "complete": False})
        return missing

    def complete(self, batches: Sequence[Batch] | None = None) -> bool:
        """The run is recorded complete and its final files are there (with ``batches``, the
        PNG files of every batch too)."""
        if not self._recorded_complete():
            return False
        return not self.missing_outputs(batches or [])

    def summary(self) -> dict[str, Any]:
        """The outputs of a complete run and its record (what ``sample --json`` reports)."""
        record = self._read_record()
        names = [p.name for p in self.format.final_paths()]
        if self.format.name == "png":
            names = [f"{len(record.get('config', {}).get('seeds', []))} PNG files"]
        labelled = record.get("config", {}).get("labels") is not None
        names += [p.name for p in self.format.label_paths()] if labelled else []
        if self.format.name != "grid" and (self.root / "grid.png").exists():
            names.append("grid.png (preview)")
        return {"files": [*names, "config.json"], "nfe": record.get("nfe"),
                "seconds": record.get("seconds"), "samples": len(record.get("config", {}).get("seeds", []))}

    def pending(self, batches: Iterable[Batch]) -> list[Batch]:
        batches = list(batches)
        if self.complete(batches):
            return []
        return [b for b in batches if not self.format.done(b)]

    def count_done(self, batches: Iterable[Batch]) -> int:
        """How many of ``batches`` are stored (complete runs: all)."""
        batches = list(batches)
        return len(batches) if self.complete(batches) else sum(self.format.done(b) for b in batches)

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
        ``dataset.json`` beside a PNG folder and inside ``images.zip``.
        """
        if self.complete(batches):
            return [p.name for p in self.format.final_paths()]
        missing = [b.index for b in batches if not self.format.done(b)]
        if missing:
            raise OptionError(f"cannot finish: batches {missing[:5]} are missing")
        written = self.format.finish(batches, labels)
        self._write_record({**self._read_record(), **extra, "complete": True})
        preview = ["grid.png (preview)"] if self.format.name != "grid" and (self.root / "grid.png").exists() else []
        return [*written, *preview, "config.json"]

    def invocations(self) -> list[dict[str, Any]]:
        """The sampling sessions recorded so far: ``{"seconds", "batches", "interrupted"}`` each."""
        runs = self._read_record().get("invocations", [])
        return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []

    def record_invocation(self, seconds: float, batches: int, *, interrupted: bool) -> dict[str, Any]:
        """Add one sampling session (main rank) to ``config.json``'s ``invocations``; ``seconds``
        becomes their total, so a resumed run's time covers every session. Returns the session."""
        session = {"seconds": round(seconds, 3), "batches": batches, "interrupted": interrupted}
        runs = [*self.invocations(), session]
        total = round(sum(float(r.get("seconds", 0)) for r in runs), 3)
        self._write_record({**self._read_record(), "invocations": runs, "seconds": total})
        return session

    def remove_stale_temporaries(self) -> None:
        for tmp in self.root.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        if key in ("device", "compile", "cuda_graph", "cudnn_benchmark"):  # how, not what: the same samples, another way
            continue
        if before.get(key) != now.get(key):
            out.append(f"{key}: {_shown(key, before.get(key))} on disk, {_shown(key, now.get(key))} now")
    return out


def _shown(key: str, value: Any) -> str:
    """A value for one line: seed lists as ranges (``0-1999,2500``), anything at most ~80 chars."""
    if key == "seeds" and isinstance(value, list) and all(isinstance(s, int) for s in value):
        text = format_seeds(value) if value else "[]"
    else:
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def check_output_file(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing folder, or a
    parent that exists but is not a writable folder. A missing parent folder is created."""
    out = Path(path)
    if out.is_dir():
        raise OptionError(f"{flag} {str(out)!r} is a folder; give a file name")
    _writable_folder(out.parent, f"{flag} {str(out)!r}: its folder ")
    return out


def check_output_folder(path: str | os.PathLike[str], *, flag: str) -> Path:
    """Refuse, before any work, an output folder that cannot be written (a file in the way, no
    permission); a missing one is created."""
    folder = Path(path)
    _writable_folder(folder, f"{flag} ")
    return folder


def _writable_folder(folder: Path, prefix: str) -> None:
    where = f"{prefix}{str(folder)!r}"
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"{where} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{where} cannot be created ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise OptionError(f"{where} is not writable")
