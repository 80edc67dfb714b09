"""Seeds, per-seed noise, and the batch plan of a run.

Every sample depends on its seed only: its noise comes from its own generator, so the same
seed gives the same sample whatever the batch size, batch position or number of processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .errors import OptionError

if TYPE_CHECKING:
    import torch

__all__ = ["Batch", "parse_seeds", "plan_batches", "seed_noise"]

_MAX_SEED = 2**63 - 1


def parse_seeds(text: str) -> list[int]:
    """Parse ``"0-63,100"`` into ``[0, 1, ..., 63, 100]`` (order kept, duplicates refused)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            start = int(lo)
            stop = int(hi) if sep else start
        except ValueError:
            raise OptionError(
                f"bad seed range {part!r}: expected numbers and ranges like 0-63,100"
            ) from None
        if start < 0 or stop > _MAX_SEED:
            raise OptionError(f"bad seed range {part!r}: seeds must be in 0..{_MAX_SEED}")
        if stop < start:
            raise OptionError(f"bad seed range {part!r}: the end is below the start")
        seeds.extend(range(start, stop + 1))
    if not seeds:
        raise OptionError(f"no seeds in {text!r}: expected e.g. 0-63,100")
    if len(set(seeds)) != len(seeds):
        raise OptionError(f"seed list {text!r} names a seed twice")
    return seeds


@attrs.frozen(kw_only=True)
class Batch:
    """One batch of a run: its position and its seeds."""

    index: int
    seeds: tuple[int, ...]


def plan_batches(seeds: Sequence[int], batch_size: int) -> list[Batch]:
    """Split ``seeds`` into consecutive batches of at most ``batch_size`` (planning only)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch size must be a positive integer, got {batch_size!r}")
    seeds = list(seeds)
    return [
        Batch(index=k, seeds=tuple(seeds[start : start + batch_size]))
        for k, start in enumerate(range(0, len(seeds), batch_size))
    ]


def seed_noise(
    seeds: Iterable[int],
    shape: Sequence[int],
    *,
    dtype: Any = None,
    device: Any = None,
) -> torch.Tensor:
    """Unit Gaussian noise ``[len(seeds), *shape]``, row ``k`` drawn from its own generator.

    Drawn in float32 on the CPU (identical on every machine and device), then cast and moved.
    """
    import torch

    rows = []
    for seed in seeds:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        rows.append(torch.randn(tuple(shape), generator=gen, dtype=torch.float32))
    noise = torch.stack(rows)
    return noise.to(dtype=dtype or torch.float32, device=device)
