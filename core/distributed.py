"""torch.distributed helpers: one process or a ``torchrun`` group, the same code path.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup` joins the process group
(``nccl`` when the rank has a GPU, ``gloo`` otherwise) and each rank takes every
``world_size``-th batch of a run's plan. GITS, AMED and SFD use :func:`all_reduce_sum` and
:func:`is_main` the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Dist", "all_reduce_sum", "barrier", "on_main_first", "setup", "shard", "teardown"]

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Dist:
    """Where this process stands in the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


_current = Dist()


def current() -> Dist:
    return _current


def setup(device: str = "cpu") -> Dist:
    """Join the process group when launched by ``torchrun``; a no-op for a single process."""
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _current = Dist()
        return _current
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _current = Dist(rank=rank, world_size=world, local_rank=local_rank, backend=backend)
    return _current


def teardown() -> None:
    global _current
    if _current.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _current = Dist()


def shard(items: Sequence[T], dist: Dist | None = None) -> list[T]:
    """This rank's share: items ``rank, rank + world_size, ...``."""
    d = dist or _current
    return list(items[d.rank :: d.world_size])


def barrier() -> None:
    if _current.active:
        import torch.distributed as dist

        dist.barrier()


def on_main_first(action: Callable[[], T]) -> T | None:
    """Run ``action`` on rank 0 only, then bring every rank to the same point (a barrier that
    also carries whether ``action`` failed). A user error there (:class:`DiffSamplerError`) stops
    every process: rank 0 raises it (the CLI prints it once), the others exit with status 2
    quietly instead of dying at the barrier. Returns the action's result on rank 0, else None."""
    from .errors import DiffSamplerError

    result: T | None = None
    failure: DiffSamplerError | None = None
    if _current.is_main:
        try:
            result = action()
        except DiffSamplerError as exc:
            failure = exc
    if _current.active:
        import torch

        device = f"cuda:{_current.local_rank}" if _current.backend == "nccl" else "cpu"
        flag = all_reduce_sum(torch.tensor([float(failure is not None)], device=device))
        if float(flag.item()) > 0 and not _current.is_main:
            raise SystemExit(2)
    if failure is not None:
        raise failure
    return result


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place (a no-op in a single process)."""
    if _current.active:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def device_for_rank(device: str, dist: Dist | None = None) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; other devices are unchanged."""
    d = dist or _current
    if device == "cuda" and d.active:
        return f"cuda:{d.local_rank}"
    return device


def log(message: str, printer: Any = print) -> None:
    """Print on rank 0 only."""
    if _current.is_main:
        printer(message)
