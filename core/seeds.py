"""Seeds, per-seed noise, and the batch plan of a run.

Every sample depends on its seed: its noise comes from its own generator, so the same seed
gives the same sample whatever its batch position or the number of processes (bit for bit at a
given batch size; neural models' CPU kernels may change the last float bits across batch sizes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .errors import OptionError

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_SEEDS", "Batch", "format_seeds", "parse_seeds", "plan_batches", "seed_noise"]

_MAX_SEED = 2**63 - 1
#: the most seeds one run may name (each is a Python int in the plan and in config.json)
MAX_SEEDS = 10_000_000


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
        if len(seeds) + stop - start + 1 > MAX_SEEDS:  # checked before expanding the range
            raise OptionError(
                f"seed list {text!r} names at least {len(seeds) + stop - start + 1:,} seeds; "
                f"at most {MAX_SEEDS:,} per run"
            )
        seeds.extend(range(start, stop + 1))
    if not seeds:
        raise OptionError(f"no seeds in {text!r}: expected e.g. 0-63,100")
    if len(set(seeds)) != len(seeds):
        raise OptionError(f"seed list {text!r} names a seed twice")
    return seeds


def format_seeds(seeds: Iterable[int]) -> str:
    """The inverse of :func:`parse_seeds`: ``[0, 1, 2, 3, 10]`` -> ``"0-3,10"`` (order kept)."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


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
