"""Teacher trajectories with the teacher's own derivative at every point (GITS, Sec. 5).

The seed's samplers return ``d_i = (x_i - D(x_i; sigma_i)) / sigma_i`` beside each point. Our
solvers return points only, so the model is wrapped in a recorder: an evaluation made at a
trajectory point itself (same tensor, same sigma) is reused, and only points the solver never
evaluated (none for euler/ipndm/dpmpp/heun/dpm started without AFS) cost one extra evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["TeacherBatch", "teacher_batch"]


class _Recorder:
    """A denoiser that remembers ``(x, sigma, D)`` of every call (references, no copies)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[Any, Any, Any]] = []

    @property
    def shape(self) -> tuple[int, ...]:
        return self.inner.shape

    @property
    def sigma_min(self) -> float:
        return self.inner.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.inner.sigma_max

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        out = self.inner(x, sigma, cond)
        self.calls.append((x, sigma, out))  # no host sync in the loop: sigma read afterwards
        return out


@attrs.frozen(kw_only=True)
class TeacherBatch:
    """``points [N, B, ...]``, ``derivs [N-1, B, ...]``, and the NFE spent per sample."""

    points: Any
    derivs: Any
    nfe: int
    extra_nfe: int


def teacher_batch(
    solver: Any, model: Any, noise: Tensor, sigmas: Sequence[float], *, cond: Any = None
) -> TeacherBatch:
    """Run the teacher from ``noise * sigmas[0]`` and collect points and derivatives."""
    import torch

    recorder = _Recorder(model)
    x = noise * float(sigmas[0])
    points: list[Tensor] = [x]
    result = solver.sample(
        recorder, x, list(sigmas), cond=cond, callback=lambda _k, _n, y: points.append(y)
    )
    if len(points) != len(sigmas):  # a solver that does not report each step
        raise RuntimeError(f"teacher reported {len(points)} points for {len(sigmas)} sigmas")
    derivs, extra = [], 0
    with torch.no_grad():
        for p, s in zip(points[:-1], sigmas[:-1], strict=True):
            found = next(
                (out for (xin, sig, out) in recorder.calls
                 if xin is p and abs(float(sig.reshape(-1)[0]) - s) <= 1e-6 * s), None,
            )
            if found is None:
                sig = torch.full((p.shape[0],), float(s), dtype=p.dtype, device=p.device)
                found = model(p, sig, cond)
                extra += 1
            derivs.append((p - found) / float(s))
    recorder.calls.clear()
    return TeacherBatch(
        points=torch.stack(points), derivs=torch.stack(derivs), nfe=result.nfe + extra,
        extra_nfe=extra,
    )
