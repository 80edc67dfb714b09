"""Capture a whole fixed-shape sampling run in one CUDA graph and replay it.

A solver's step count and sigmas are known before its loop starts, and the loop has no
host-device synchronisation (coefficients are host floats; the finiteness check is off during
capture and done once on the output), so the entire run — every network forward and every
update — can be recorded once and replayed for each new batch of noise: no Python, no kernel
launch overhead, no allocator traffic between steps (NVIDIA CUDA Graphs; ``torch.cuda.CUDAGraph``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import OptionError, SamplingError
from .protocols import Denoiser, Solver

if TYPE_CHECKING:
    import torch

__all__ = ["GraphedSampler", "PerBatch", "capturing", "in_graph_run"]

_preparing = 0  # GraphedSampler warm-ups and captures in progress


def in_graph_run() -> bool:
    """Whether the current sampling run is a CUDA graph's warm-up or capture: a model whose
    conditioning needs a different, device-side path in a graph (one that must exist before the
    capture, e.g. a table to gather from) takes it whenever this is True."""
    return _preparing > 0 or capturing()


class PerBatch:
    """The last value a model derived from a conditioning tensor (class labels checked and made
    one-hot, prompts looked up), reused while that same, unmodified tensor comes back: a solver
    passes one ``cond`` to every step of a batch, so a check that reads the labels on the host
    costs one synchronisation per batch, not one per step. Never used in a CUDA graph's warm-up or
    capture, where the graph must compute it from its static input at every replay."""

    def __init__(self) -> None:
        self._last: tuple[Any, tuple[Any, ...], Any] | None = None

    def value(self, cond: Any, compute: Callable[[], Any], *key: Any) -> Any:
        """``compute()`` for ``cond`` and ``key``, or what it returned last time for the same
        tensor (the same object, unchanged since) and the same ``key``."""
        version = _version(cond)
        if version is None or in_graph_run():
            return compute()
        last = self._last
        if last is not None and last[0] is cond and last[1] == (version, *key):
            return last[2]
        result = compute()
        self._last = (cond, (version, *key), result)
        return result

    def clear(self) -> None:
        self._last = None


def _version(cond: Any) -> int | None:
    try:
        return int(cond._version)  # bumped by every in-place change of the tensor
    except (AttributeError, RuntimeError):  # not a tensor, or an inference-mode tensor
        return None


def capturing() -> bool:
    """Whether a CUDA graph is being captured now: value checks that would synchronise the host
    (``bool(tensor)``) must be skipped then; the warm-up runs before the capture made them."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class GraphedSampler:
    """``sampler(x)`` = ``solver.sample(model, x, sigmas, ...).x``, replayed from a CUDA graph.

    ``x`` must have the captured shape, dtype and device. The output is a fresh tensor (the
    graph's own output buffer is overwritten by the next replay). A tensor ``cond`` given at
    capture (class labels) is a static input too: each call may pass new values of its shape.
    """

    def __init__(
        self,
        solver: Solver,
        model: Denoiser,
        sigmas: Any,
        example: torch.Tensor,
        *,
        cond: Any = None,
        afs: bool = False,
        denoise_to_zero: bool = False,
        warmup: int = 2,
    ) -> None:
        import torch

        if example.device.type != "cuda":
            raise OptionError("CUDA-graph capture needs a CUDA device (use --device cuda)")
        self.shape, self.dtype, self.device = example.shape, example.dtype, example.device
        self._static_in = example.detach().clone()
        self._static_cond = cond.detach().clone() if isinstance(cond, torch.Tensor) else None
        static_cond = self._static_cond if self._static_cond is not None else cond
        extra: dict[str, Any] = {"check_finite": False}  # ODESolver's: no host sync inside the graph

        def run() -> torch.Tensor:
            return solver.sample(
                model, self._static_in, sigmas, cond=static_cond, afs=afs, denoise_to_zero=denoise_to_zero, **extra
            ).x

        global _preparing
        _preparing += 1
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the graph (cuDNN plans, compile, ...)
                for _ in range(warmup):
                    run()
            torch.cuda.current_stream().wait_stream(stream)
            self.nfe = solver.nfe(len(sigmas), afs=afs, denoise_to_zero=denoise_to_zero)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._static_out = run()
        finally:
            _preparing -= 1

    def __call__(self, x: torch.Tensor, *, cond: Any = None, check_finite: bool = True) -> torch.Tensor:
        if x.shape != self.shape or x.dtype != self.dtype or x.device != self.device:
            raise SamplingError(
                f"graphed sampler was captured for {tuple(self.shape)} {self.dtype} on {self.device}, "
                f"got {tuple(x.shape)} {x.dtype} on {x.device}"
            )
        if self._static_cond is not None:
            if cond is None or tuple(cond.shape) != tuple(self._static_cond.shape):
                raise SamplingError(f"this graph was captured with cond shaped {tuple(self._static_cond.shape)}")
            self._static_cond.copy_(cond)
        elif cond is not None:
            raise SamplingError("this graph was captured without cond")
        self._static_in.copy_(x)
        self.graph.replay()
        out = self._static_out.clone()
        if check_finite:
            import torch

            if not bool(torch.isfinite(out).all()):  # one sync per batch, after the whole run
                raise SamplingError("the graphed sampling run produced non-finite values")
        return out


def capture(
    solver: Solver, model: Denoiser, sigmas: Sequence[float] | Any, example: torch.Tensor, **kwargs: Any
) -> GraphedSampler:
    return GraphedSampler(solver, model, sigmas, example, **kwargs)
