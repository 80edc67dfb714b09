"""Read EDM's network pickles without executing anything from the file.

EDM (Karras et al. 2022, NVlabs/edm) saves ``network-snapshot-*.pkl`` with :func:`pickle.dump`
of ``dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)``. Every network module
is a ``torch_utils.persistence`` record: the pickle calls
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type='class', version=6, module_src=<source code>, class_name=..., state=...)``,
where ``state`` is the module's ``__dict__`` (``_init_kwargs``, ``_parameters``, ``_buffers``,
``_modules``, ...). EDM's own loader *executes* ``module_src``; we never do.

:class:`SafeUnpickler` resolves only the globals on an allow-list, each to a harmless
replacement written here: persistence records become inert :class:`PersistentRecord` objects,
``torch.nn`` containers become :class:`ContainerRecord` objects, tensors are rebuilt from
storages that are read with ``torch.load(..., weights_only=True)``. Any other global
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, EDM's own classes referenced
directly, ...) stops the load with a :class:`~diffsampler.ModelLoadError` naming it, before
anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import torch

from diffsampler.errors import ModelLoadError

__all__ = [
    "ALLOWED_GLOBALS",
    "ContainerRecord",
    "PersistentRecord",
    "SafeUnpickler",
    "iter_tensors",
    "load_edm_pickle",
]

PERSISTENCE_MODULE = "torch_utils.persistence"


class PersistentRecord:
    """An unexecuted ``torch_utils.persistence`` object: its class name and recorded state."""

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, dict):
            raise ModelLoadError("malformed persistence record (meta is not a dict)")
        if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
            raise ModelLoadError("malformed persistence record (expected type='class' and a class_name)")
        state = meta.get("state")
        if state is None:
            state = {}
        if not isinstance(state, dict):
            raise ModelLoadError(f"persistence record {meta['class_name']!r} has no state dict")
        self.class_name: str = meta["class_name"]
        self.version: Any = meta.get("version")
        self.state: dict[str, Any] = state
        src = meta.get("module_src")
        self.module_src_length = len(src) if isinstance(src, str) else 0  # kept unexecuted

    @property
    def init_args(self) -> tuple[Any, ...]:
        value = self.state.get("_init_args") or ()
        return tuple(value)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        value = self.state.get("_init_kwargs") or {}
        if not isinstance(value, dict):
            raise ModelLoadError(f"record {self.class_name!r}: _init_kwargs is not a dict")
        return dict(value)

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r})"


class ContainerRecord:
    """A pickled ``torch.nn`` container (``ModuleDict``, ...), kept as its class name and state."""

    class_name = "Module"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ModelLoadError(f"malformed {self.class_name} state in the pickle")
        self.state = state

    def __repr__(self) -> str:
        return f"ContainerRecord({self.class_name!r})"


def _container(name: str) -> type[ContainerRecord]:
    return type(f"{name}Record", (ContainerRecord,), {"class_name": name})


class _EasyDict(dict[str, Any]):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access): a plain dict here."""


# -- tensors ------------------------------------------------------------------------------------
def _load_storage(data: Any) -> Any:
    """``torch.storage._load_from_bytes``: a storage saved by ``torch.save``, read weights-only."""
    if not isinstance(data, bytes | bytearray):
        raise ModelLoadError("malformed storage in the pickle (expected bytes)")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"cannot read a tensor storage in the pickle: {exc}") from None
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise ModelLoadError(f"expected a tensor storage, found {type(storage).__name__}")
    return storage


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: int,
    size: Any,
    stride: Any,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``: a view of ``storage``, bounds-checked by torch."""
    if isinstance(storage, torch.storage.TypedStorage):
        dtype, untyped = storage.dtype, storage._untyped_storage
    elif isinstance(storage, torch.UntypedStorage):
        dtype, untyped = torch.uint8, storage
    else:
        raise ModelLoadError(f"tensor without a storage in the pickle ({type(storage).__name__})")
    try:
        tensor = torch.empty((0,), dtype=dtype)
        tensor.set_(untyped, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    except Exception as exc:
        raise ModelLoadError(f"malformed tensor in the pickle: {exc}") from None
    return tensor


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor`` (older pickles)."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_parameter``: the data tensor (we rebuild modules ourselves)."""
    if not isinstance(data, torch.Tensor):
        raise ModelLoadError("malformed parameter in the pickle")
    return data


def _rebuild_parameter_with_state(
    data: Any, requires_grad: bool = False, backward_hooks: Any = None, state: Any = None
) -> torch.Tensor:
    """``torch._utils._rebuild_parameter_with_state``: the data; the extra state is ignored."""
    return _rebuild_parameter(data)


# -- numpy scalars (EDM records e.g. skip_scale=np.sqrt(0.5) in init kwargs) ----------------------
_NUMPY_KINDS = set("biufc?")


class _NumpyDType:
    """Stand-in for ``numpy.dtype``: remembers the type string and byte order, nothing else."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str) or not code or code[0] not in _NUMPY_KINDS:
            raise ModelLoadError(f"refusing numpy dtype {code!r} in the pickle (numeric dtypes only)")
        self.code = code
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: a numeric numpy scalar, returned as a Python number."""
    import numpy as np

    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise ModelLoadError("refusing a non-numeric numpy scalar in the pickle")
    order = "<" if dtype.order in ("|", "=") else dtype.order
    try:
        value = np.frombuffer(data, dtype=np.dtype(order + dtype.code), count=1)[0]
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"malformed numpy scalar in the pickle: {exc}") from None
    return value.item()


# -- the allow-list ----------------------------------------------------------------------------
def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    return PersistentRecord(meta)


_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")

ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    (PERSISTENCE_MODULE, "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{("torch.nn.modules.container", name): _container(name) for name in _CONTAINERS},
}
"""Every global an EDM pickle may name, mapped to the harmless object used in its place."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and executes no file content."""

    def __init__(self, file: Any, *, source: str = "<pickle>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ModelLoadError(
                f"refusing to load {self.source}: it references the global '{module}.{name}', "
                "which is not on the allow-list for EDM network pickles (nothing from the file "
                "was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ModelLoadError(f"refusing to load {self.source}: unexpected persistent id {pid!r}")


def load_edm_pickle(path: str, *, data: bytes | None = None) -> Any:
    """The unpickled object of an EDM pickle, with records in place of modules."""
    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        return SafeUnpickler(io.BytesIO(data), source=path).load()
    except ModelLoadError:
        raise
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # truncated or corrupt pickles
        raise ModelLoadError(f"{path} is not a valid EDM pickle: {type(exc).__name__}: {exc}") from None


def _children(state: dict[str, Any]) -> dict[str, Any]:
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise ModelLoadError("malformed module record (_modules is not a dict)")
    return modules


def iter_modules(record: Any, prefix: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(dotted path, class name, state)`` of a record and every sub-module record."""
    if isinstance(record, PersistentRecord | ContainerRecord):
        yield prefix, record.class_name, record.state
        for name, child in _children(record.state).items():
            if child is None:
                continue
            yield from iter_modules(child, f"{prefix}{name}.")
    else:
        raise ModelLoadError(
            f"module {prefix.rstrip('.') or '<root>'!r} in the pickle is a "
            f"{type(record).__name__}, not a persistence record"
        )


def iter_tensors(record: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The persistent parameters and buffers of a record tree, as state-dict ``(key, tensor)``."""
    for prefix, class_name, state in iter_modules(record):
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            entries = state.get(group) or {}
            if not isinstance(entries, dict):
                raise ModelLoadError(f"module {prefix or class_name}: malformed {group}")
            for name, value in entries.items():
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise ModelLoadError(f"{prefix}{name} in the pickle is not a tensor")
                yield f"{prefix}{name}", value
