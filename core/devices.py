"""Device names given by users: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (or any torch device).

One check for every command, so that a machine without a GPU answers ``--device cuda`` with one
line instead of torch's assertion deep inside the first tensor creation.
"""

from __future__ import annotations

from .errors import OptionError

__all__ = ["resolve_device"]


def resolve_device(name: str, *, flag: str = "--device") -> str:
    """``auto`` becomes ``cuda`` when a GPU is usable, else ``cpu``; any other name must be a
    torch device that exists on this machine (``cuda:N`` needs at least ``N + 1`` GPUs)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(f"{flag} must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"{flag} {name}: no CUDA device is available (torch {torch.__version__}"
                f"{' built without CUDA' if torch.version.cuda is None else ''}); use cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"{flag} {name}: no MPS device is available; use --device cpu")
    return name
