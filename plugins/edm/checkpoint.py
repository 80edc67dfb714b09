"""Load EDM networks from their files, and save ours, without executing file content.

Formats:

* EDM pickles (``network-snapshot-*.pkl``, ``edm-*.pkl``): read by :mod:`.safepickle`; the
  network (``ema`` by default) is rebuilt as *our* class from its recorded class name and
  ``init_kwargs``, then its recorded parameters and buffers are loaded strictly.
* State dicts: ``.safetensors`` (read by :mod:`diffsampler.tensorfile`) or ``.pt``/``.pth``
  (``torch.load(weights_only=True)``), with a JSON config beside them (``<stem>.json`` or
  ``config.json``)::

      {"format": "diffsampler.edm", "precond": "EDMPrecond", "architecture": "SongUNet",
       "init_kwargs": {"img_resolution": 16, "img_channels": 1, ...},
       "weights": "digits.safetensors", "sigma_min": 0.002, "sigma_max": 80.0}

  ``architecture`` is the precond's ``model_type``; ``init_kwargs`` are the precond's
  constructor arguments (those of EDM's classes). ``weights`` (relative to the JSON) lets the
  JSON itself be the path given.

Loading is strict: missing keys, unexpected keys and shape mismatches are all reported.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsampler import tensorfile
from diffsampler.errors import ModelLoadError

from .precond import ARCHITECTURES, PRECONDITIONERS, Precond
from .safepickle import (
    ContainerRecord,
    PersistentRecord,
    iter_modules,
    iter_tensors,
    load_edm_pickle,
)

__all__ = [
    "CONFIG_FORMAT",
    "build_from_config",
    "build_from_record",
    "config_of",
    "find_config",
    "load_network",
    "load_pickle",
    "load_state_dict_strict",
    "save_network",
]

CONFIG_FORMAT = "diffsampler.edm"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
PICKLE_KEYS = ("ema", "net", "model")


# -- strict loading ----------------------------------------------------------------------------
def load_state_dict_strict(module: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy ``tensors`` into ``module``; any missing, unexpected or misshaped key is an error."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = [
        f"{k} (file {tuple(tensors[k].shape)}, network {tuple(expected[k].shape)})"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misshaped)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelLoadError(f"{source} does not fit the network: " + "; ".join(problems))
    bad = [k for k, v in tensors.items() if not (v.is_floating_point() == expected[k].is_floating_point())]
    if bad:
        raise ModelLoadError(f"{source}: tensors of the wrong kind (integer vs float): {', '.join(bad[:8])}")
    module.load_state_dict(dict(tensors), strict=True)


# -- building -----------------------------------------------------------------------------------
def _construct(class_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, source: str) -> Precond:
    cls = PRECONDITIONERS.get(class_name)
    if cls is None:
        if class_name in ARCHITECTURES:
            raise ModelLoadError(
                f"{source} holds a bare {class_name} without a preconditioner; diffsampler needs "
                f"one of {', '.join(PRECONDITIONERS)}"
            )
        raise ModelLoadError(
            f"{source}: unknown network class {class_name!r}; diffsampler rebuilds "
            f"{', '.join(PRECONDITIONERS)} (with {', '.join(ARCHITECTURES)})"
        )
    model_type = kwargs.get("model_type", inspect.signature(cls).parameters["model_type"].default)
    if model_type not in ARCHITECTURES:
        raise ModelLoadError(
            f"{source}: unknown architecture model_type={model_type!r}; known: {', '.join(ARCHITECTURES)}"
        )
    try:
        inspect.signature(cls).bind(*args, **{k: v for k, v in kwargs.items()})
        inner = ARCHITECTURES[model_type]
        own = set(inspect.signature(cls).parameters) - {"model_kwargs"}
        allowed = set(inspect.signature(inner).parameters) - {"img_resolution", "in_channels", "out_channels", "label_dim"}
        extra = sorted(k for k in kwargs if k not in own and k not in allowed)
        if extra:
            raise TypeError(f"unexpected arguments {', '.join(extra)}")
        with torch.device("cpu"):
            return cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{source}: cannot build {class_name}({model_type}) from its recorded arguments: {exc}") from None


def build_from_record(record: PersistentRecord, *, source: str) -> Precond:
    """Our network for an EDM persistence record, with the record's tensors loaded strictly.

    Every sub-module record must name the same class as our module at that path.
    """
    net = _construct(record.class_name, record.init_args, record.init_kwargs, source=source)
    ours = dict(net.named_modules())
    for path, class_name, _ in iter_modules(record):
        key = path.rstrip(".")
        mine = ours.get(key)
        if mine is None:
            raise ModelLoadError(f"{source}: unexpected module {key!r} ({class_name}) in the pickle")
        if type(mine).__name__ != class_name:
            raise ModelLoadError(
                f"{source}: module {key or '<root>'!r} is a {class_name} in the pickle but a "
                f"{type(mine).__name__} here"
            )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in iter_tensors(record):
        if key in tensors:
            raise ModelLoadError(f"{source}: tensor {key!r} appears twice")
        tensors[key] = value
    load_state_dict_strict(net, tensors, source=source)
    return net.eval().requires_grad_(False)


def load_pickle(path: str | os.PathLike[str], *, key: str | None = None) -> tuple[Precond, dict[str, Any]]:
    """The network of an EDM pickle (``key``: which entry, default ``ema``) and a description."""
    source = os.fspath(path)
    obj = load_edm_pickle(source)
    record: Any = obj
    chosen = None
    if isinstance(obj, dict):
        keys = [key] if key else [k for k in PICKLE_KEYS if k in obj]
        if not keys or keys[0] not in obj:
            found = ", ".join(repr(k) for k in obj) or "none"
            raise ModelLoadError(f"{source}: no network entry {key or 'ema'!r} (entries: {found})")
        chosen = keys[0]
        record = obj[chosen]
    if isinstance(record, ContainerRecord) or not isinstance(record, PersistentRecord):
        what = f"entry {chosen!r} of {source}" if chosen else source
        raise ModelLoadError(f"{what} is not an EDM network record (found {type(record).__name__})")
    net = build_from_record(record, source=source)
    info = {
        "format": "edm-pickle",
        "entry": chosen,
        "precond": record.class_name,
        "architecture": net.model_type,
        "init_kwargs": _jsonable(record.init_kwargs),
    }
    return net, info


def build_from_config(config: Mapping[str, Any], *, source: str) -> Precond:
    """An untrained network described by a JSON config (see the module docstring)."""
    if not isinstance(config, Mapping):
        raise ModelLoadError(f"{source}: the config must be a JSON object")
    fmt = config.get("format", CONFIG_FORMAT)
    if fmt != CONFIG_FORMAT:
        raise ModelLoadError(f"{source}: config format {fmt!r} is not {CONFIG_FORMAT!r}")
    precond = config.get("precond")
    kwargs = dict(config.get("init_kwargs") or {})
    if not isinstance(precond, str):
        raise ModelLoadError(f"{source}: the config needs 'precond' (one of {', '.join(PRECONDITIONERS)})")
    arch = config.get("architecture")
    if arch is not None:
        if kwargs.get("model_type", arch) != arch:
            raise ModelLoadError(
                f"{source}: architecture {arch!r} contradicts init_kwargs.model_type {kwargs['model_type']!r}"
            )
        kwargs["model_type"] = arch
    return _construct(precond, (), kwargs, source=source)


def config_of(net: Precond, **extra: Any) -> dict[str, Any]:
    """The JSON config that rebuilds ``net`` (its recorded constructor arguments)."""
    kwargs = _jsonable(net.init_kwargs)
    arch = kwargs.pop("model_type", net.model_type)
    return {
        "format": CONFIG_FORMAT,
        "precond": type(net).__name__,
        "architecture": arch,
        "init_kwargs": kwargs,
        **extra,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# -- files ------------------------------------------------------------------------------------
def find_config(path: str | os.PathLike[str]) -> Path | None:
    """The JSON config of a weights file: ``<stem>.json`` beside it, else ``config.json``."""
    p = Path(path)
    for candidate in (p.with_suffix(".json"), p.parent / "config.json"):
        if candidate.is_file() and candidate != p:
            return candidate
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read the config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: the config must be a JSON object")
    return data


def _weights_for_config(config_path: Path, config: Mapping[str, Any]) -> Path:
    named = config.get("weights")
    if isinstance(named, str):
        return config_path.parent / named
    for suffix in WEIGHT_SUFFIXES:
        candidate = config_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{config_path} names no 'weights' and no {'/'.join(WEIGHT_SUFFIXES)} file shares its name"
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``.pt``/``.pth`` state dict (weights only)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return tensorfile.load_file(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {p} as a weights-only torch file: {exc}") from None
    if isinstance(obj, Mapping):
        for key in ("ema", "state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ModelLoadError(f"{p} is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def load_network(path: str | os.PathLike[str], *, key: str | None = None) -> tuple[Precond, dict[str, Any]]:
    """Our network from an EDM pickle, a weights file with its JSON config, or the JSON itself."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"no such model file: {p}")
    if p.suffix == ".pkl":
        return load_pickle(p, key=key)
    if p.suffix == ".json":
        config_path: Path | None = p
        config = _read_json(p)
        weights = _weights_for_config(p, config)
    elif p.suffix in WEIGHT_SUFFIXES:
        config_path = find_config(p)
        if config_path is None:
            raise ModelLoadError(
                f"{p} has no JSON config beside it ({p.with_suffix('.json').name} or config.json) "
                "naming its precond, architecture and init_kwargs"
            )
        config = _read_json(config_path)
        weights = p
    else:
        raise ModelLoadError(f"{p}: not an EDM model file (.pkl, .safetensors, .pt, .pth or .json)")
    if not weights.is_file():
        raise ModelLoadError(f"{config_path}: its weights file {weights} does not exist")
    net = build_from_config(config, source=str(config_path))
    load_state_dict_strict(net, read_state_dict(weights), source=os.fspath(weights))
    info = dict(config)
    info.setdefault("weights", weights.name)
    return net.eval().requires_grad_(False), info


def save_network(
    net: Precond, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None, **extra: Any
) -> Path:
    """Write ``net`` as ``<path>.safetensors`` + ``<path>.json``; returns the JSON's path."""
    p = Path(path)
    weights = p.with_suffix(".safetensors")
    config = config_of(net, weights=weights.name, **extra)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in net.state_dict().items()}
    tensorfile.save_file(state, weights, metadata=dict(metadata or {}))
    json_path = p.with_suffix(".json")
    json_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return json_path
