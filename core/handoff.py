"""Hand finished batches to a writer thread, so that saving one batch overlaps sampling the next.

On CUDA a finished batch is copied into pinned host memory with ``non_blocking=True`` and a CUDA
event marks the end of the copy; the writer thread waits for that event, not the sampling loop,
which goes on queueing the next batch's work at once. On the CPU the batch is handed over as it
is (PNG and zlib encoding release the GIL). At most ``depth`` batches wait, bounding memory.

Failures: an exception in the callback stops the run before the next batch is sampled and is
raised in the sampling thread; an exception while sampling still lets every batch finished
before it be written first. Either way nothing finished is lost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["BatchHandoff"]

B = TypeVar("B")
_STOP = object()


class BatchHandoff(Generic[B]):
    """``put(batch, x)`` from the sampling loop; ``on_batch(batch, host_float32)`` runs in order
    on one background thread. Use as a context manager: leaving it waits for every batch."""

    def __init__(self, on_batch: Callable[[B, Tensor], None], *, depth: int = 2) -> None:
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="diffsampler-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain without writing: the run is stopping
            batch, host, done = item
            try:
                if done is not None:
                    done.synchronize()  # the device-to-host copy has landed
                self._on_batch(batch, host)
            except BaseException as exc:  # handed to the sampling thread
                self._error = exc

    def check(self) -> None:
        """Raise the writer's exception, if it had one."""
        if self._error is not None:
            raise self._error

    def put(self, batch: B, x: Tensor) -> None:
        """Hand over a finished batch (any device, any float dtype); blocks while ``depth`` wait."""
        import torch

        self.check()
        done = None
        if x.device.type == "cuda":
            host = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(x.detach().to(torch.float32), non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(x.device))
        else:
            host = x.detach().to(torch.float32)
        self._queue.put((batch, host, done))

    def close(self) -> None:
        """Wait until every handed batch is written; raise the writer's exception if any."""
        self._queue.put(_STOP)
        self._thread.join()
        self.check()

    def __enter__(self) -> BatchHandoff[B]:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._queue.put(_STOP)
        self._thread.join()  # batches finished before a sampling error are still written
        if exc_type is None:
            self.check()
