"""Shared checks of the neural models' inference options (precision, channels-last, compiled())."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

#: Stated tolerances: relative L2 deviation of the final samples (iPNDM, NFE 5) from fp32 eager.
TOLERANCE = {"fp32": 1e-5, "fp16": 3e-2, "bf16": 1.5e-1}
CPU_VARIANTS = ("fp32", "fp32+cl", "bf16", "bf16+cl", "fp16", "fp16+cl")


def check_cpu_variants(model: str, model_options: dict[str, Any], batch: int) -> None:
    """Every CPU `bench` variant of ``model`` is finite and within :data:`TOLERANCE` of fp32."""
    from diffsampler.bench import Variant, run_bench

    rows = run_bench(model=model, model_options=model_options, solver="ipndm", nfe=5, batches=(batch,),
                     variants=[Variant.parse(t) for t in CPU_VARIANTS], device="cpu", repeat=1, warmup=0)
    assert [row.variant for row in rows] == list(CPU_VARIANTS)
    for row in rows:
        assert math.isfinite(row.rel_l2_deviation), row
        assert row.rel_l2_deviation < TOLERANCE[row.variant.split("+")[0]], row


def eager_compiler(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Swap ``torch.compile`` for Dynamo's eager backend (tracing and wiring in seconds, not
    Inductor's kernels); returns the list of the keyword arguments each call got."""
    calls: list[dict[str, Any]] = []
    real = torch.compile

    def eager_compile(fn: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(fn, backend="eager", dynamic=kwargs["dynamic"])

    monkeypatch.setattr(torch, "compile", eager_compile)
    return calls
