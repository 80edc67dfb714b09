"""Process-wide backend settings a run may switch on for its own duration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["cudnn_autotune"]


@contextlib.contextmanager
def cudnn_autotune(enabled: bool) -> Iterator[None]:
    """Within the block cuDNN times its convolution algorithms once per new input shape and keeps
    the fastest (``torch.backends.cudnn.benchmark``), instead of picking one by heuristics. A
    sampling run has fixed shapes, so only its first batch pays for the timing. The choice may
    differ from run to run, so results are then not bit-reproducible on a GPU. Off: no change
    (a setting the caller made stays as it is); the previous value is restored on exit."""
    import torch

    before = torch.backends.cudnn.benchmark
    if enabled:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
