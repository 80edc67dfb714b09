"""Sampling speed: images/s, ms per forward, the solver's overhead, memory, and output deviation.

For one model, solver and NFE, every *variant* (precision, channels-last, ``torch.compile``,
whole-loop CUDA graph) is timed at every batch size on the same seeded noise. The fp32-eager
output is the reference each variant's deviation is measured against, and the overhead ratio is
``sampling time / (NFE x forward time)``: 1.0 means the network is the only cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from .api import file_loaders, get_model, get_schedule, get_solver
from .errors import OptionError, UnknownComponentError
from .protocols import Compilable
from .registry import get_registry
from .seeds import seed_noise
from .solver import steps_for_nfe
from .tuning import cudnn_autotune

__all__ = ["BenchRow", "Variant", "build_model", "run_bench"]

_FLAGS = {"cl": "channels_last", "channels_last": "channels_last", "compile": "compile",
          "graph": "cuda_graph", "cuda_graph": "cuda_graph", "tune": "autotune", "autotune": "autotune"}
_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@attrs.frozen(kw_only=True)
class Variant:
    """One inference configuration, written ``fp16+cl+compile+graph`` on the command line."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    autotune: bool = False  # cuDNN picks its convolution algorithms by timing them (CUDA)

    @classmethod
    def parse(cls, text: str) -> Variant:
        parts = [p.strip() for p in text.split("+") if p.strip()]
        precision, flags = "fp32", {}
        for part in parts:
            if part in _PRECISIONS:
                precision = part
            elif part in _FLAGS:
                flags[_FLAGS[part]] = True
            else:
                raise OptionError(
                    f"bad variant {text!r}: parts are fp32|tf32|bf16|fp16, cl, compile, graph, tune (joined by +)"
                )
        return cls(precision=precision, **flags)

    @property
    def label(self) -> str:
        parts = [self.precision]
        parts += [name for name, on in (("cl", self.channels_last), ("compile", self.compile),
                                         ("graph", self.cuda_graph), ("tune", self.autotune)) if on]
        return "+".join(parts)

    @property
    def is_reference(self) -> bool:
        return self == Variant()


@attrs.frozen(kw_only=True)
class BenchRow:
    variant: str
    batch: int
    nfe: int
    images_per_s: float
    ms_per_batch: float
    ms_per_forward: float
    overhead_ratio: float
    peak_memory_mb: float | None
    max_abs_deviation: float
    rel_l2_deviation: float


def _timer(device: Any) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _median_ms(fn: Callable[[], Any], sync: Callable[[], None], repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def build_model(name: str, options: dict[str, Any], variant: Variant, compile_mode: str = "default") -> Any:
    """Model ``name`` set up as ``variant`` says (precision, channels-last, compiled)."""
    extra: dict[str, Any] = dict(options)
    if variant.precision != "fp32":
        extra["precision"] = variant.precision
    if variant.channels_last:
        extra["channels_last"] = True
    model = get_model(name, **extra)
    if variant.compile:
        if not isinstance(model, Compilable):
            raise OptionError(f"model {name!r} cannot be compiled (it has no compiled() method)")
        model = model.compiled(compile_mode)
    return model


def _check_variant(model: str, variant: Variant, device: Any) -> None:
    """The variant's needs against the device and the model's declared options."""
    if variant.cuda_graph and device.type != "cuda":
        raise OptionError(f"variant {variant.label!r}: CUDA graphs need --device cuda")
    needs = [name for name, wanted in (("precision", variant.precision != "fp32"),
                                        ("channels_last", variant.channels_last)) if wanted]
    if not needs:
        return
    try:
        component = get_registry().get("model", model)
    except UnknownComponentError:
        loaders = file_loaders(Path(model))
        if len(loaders) != 1:
            return  # get_model reports missing or ambiguous files itself
        component = loaders[0]
    fields = attrs.fields_dict(component.options) if component.options is not None else {}
    missing = [name for name in needs if name not in fields]
    if missing:
        raise OptionError(
            f"variant {variant.label!r}: model {model!r} has no {' or '.join(missing)} option "
            "(only neural models with inference options take fp16/bf16/tf32 or +cl)"
        )


def run_bench(
    *,
    model: str = "digits",
    model_options: dict[str, Any] | None = None,
    solver: str = "ipndm",
    solver_options: dict[str, Any] | None = None,
    schedule: str | None = None,
    nfe: int = 5,
    batches: Sequence[int] = (128,),
    variants: Sequence[Variant] = (Variant(),),
    device: str = "cpu",
    repeat: int = 5,
    warmup: int = 2,
    compile_mode: str = "default",
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Time every variant at every batch size; see the module docstring."""
    import torch

    dev = torch.device(device)
    for variant in variants:  # refuse what cannot run before timing anything
        _check_variant(model, variant, dev)
    sync = _timer(dev)
    sol = get_solver(solver, **(solver_options or {}))
    name, sched_options = getattr(sol, "recommended_schedule", ("polynomial", {"rho": 7.0}))
    sched = get_schedule(schedule or name, **({} if schedule else sched_options))
    steps = steps_for_nfe(sol, nfe)
    reference_model = get_model(model, **(model_options or {}))
    sigmas = sched.sigmas(steps, reference_model.sigma_min, reference_model.sigma_max,
                          denoiser=reference_model)
    rows: list[BenchRow] = []
    with torch.no_grad():
        references: dict[int, torch.Tensor] = {}
        for batch in batches:
            x = seed_noise(range(batch), reference_model.shape, device=dev) * float(sigmas[0])
            references[batch] = sol.sample(reference_model, x, sigmas).x.float()
        del reference_model
        for variant in variants:
            net = build_model(model, dict(model_options or {}), variant, compile_mode)
            for batch in batches:
                with cudnn_autotune(variant.autotune):
                    row = _measure(net, sol, sigmas, variant, batch, nfe, references[batch], dev,
                                   sync, repeat, warmup)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
            del net
    return rows


def _measure(
    net: Any, sol: Any, sigmas: Any, variant: Variant, batch: int, nfe: int, ref: Any,
    dev: Any, sync: Callable[[], None], repeat: int, warmup: int,
) -> BenchRow:
    import torch

    x = seed_noise(range(batch), net.shape, device=dev) * float(sigmas[0])
    sigma = torch.full((batch,), float(sigmas[1]), device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    forward_ms = _median_ms(lambda: net(x, sigma), sync, repeat, warmup)
    if variant.cuda_graph:
        from .graphs import GraphedSampler

        graphed = GraphedSampler(sol, net, sigmas, x)

        def run_once() -> torch.Tensor:
            return graphed(x, check_finite=False)
    else:
        def run_once() -> torch.Tensor:
            return sol.sample(net, x, sigmas, check_finite=False).x
    sample_ms = _median_ms(run_once, sync, repeat, warmup)
    out = run_once().float()
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return BenchRow(
        variant=variant.label, batch=batch, nfe=nfe,
        images_per_s=batch / (sample_ms / 1e3), ms_per_batch=sample_ms,
        ms_per_forward=forward_ms, overhead_ratio=sample_ms / (nfe * forward_ms),
        peak_memory_mb=peak,
        max_abs_deviation=float((out - ref).abs().max()),
        rel_l2_deviation=float((out - ref).norm() / ref.norm()),
    )
