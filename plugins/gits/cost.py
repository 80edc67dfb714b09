"""The cost matrix of GITS (Chen et al. ICML 2024, arXiv:2405.11326, Sec. 5; seed ``get_dp_list``).

For teacher points ``x_i`` at ``sigma_i`` with the teacher's derivative ``d_i = (x_i - D(x_i;
sigma_i)) / sigma_i``, one Euler step from ``i`` to ``j`` lands at
``y_ij = x_i + (sigma_j - sigma_i) d_i``. Its cost against the teacher point ``x_j``:

* ``l1``/``l2``: ``||y_ij - x_j||`` (norm over all of a sample's coordinates);
* ``dev`` (the seed's default): ``dev(y_ij) - dev(x_j)``, where ``dev(y)`` is the distance of
  ``y`` from the straight line through the trajectory's start ``x_0`` and end ``x_{N-1}`` (the
  seed's ``cal_deviation``; the end point's own deviation is taken as 0, as in the seed). It is
  signed, as in the seed: a step that lands nearer the line than the teacher costs less than 0.

Each entry is a mean over trajectories. This module returns per-batch *sums* (float64) so that
batches and processes add up exactly; the caller divides by the number of trajectories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["METRICS", "cost_sums", "deviation"]

METRICS = ("dev", "l1", "l2")


def deviation(points: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Distance of ``points [..., B, D]`` from the line through ``start`` and ``end`` ``[B, D]``.

    The seed's ``cal_deviation``: the component of ``end - point`` orthogonal to
    ``end - start``, its L2 norm.
    """
    import torch

    axis = end - start
    unit = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    rel = end - points
    along = (rel * unit).sum(-1, keepdim=True)
    return torch.linalg.vector_norm(rel - along * unit, dim=-1)


def cost_sums(traj: Tensor, derivs: Tensor, sigmas: list[float], metric: str) -> Tensor:
    """Sum over the batch of the cost of every Euler step ``i -> j`` (``j > i``), ``[N, N]``.

    ``traj``: ``[N, B, ...]`` teacher points at ``sigmas``; ``derivs``: ``[N-1, B, ...]`` the
    teacher's derivative at each point but the last. Entries on and below the diagonal are 0.
    """
    import torch

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    n, b = traj.shape[0], traj.shape[1]
    x = traj.reshape(n, b, -1)
    d = derivs.reshape(n - 1, b, -1)
    s = torch.tensor(sigmas, dtype=x.dtype, device=x.device)
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    if metric == "dev":
        dev_teacher = deviation(x, x[0], x[-1])  # [N, B]
        dev_teacher[-1] = 0.0  # the seed appends 0 for the end point
    for i in range(n - 1):
        h = (s[i + 1 :] - s[i]).reshape(-1, 1, 1)
        y = x[i] + h * d[i]  # [N-1-i, B, D]: one Euler step to every later point
        if metric == "l1":
            c = (y - x[i + 1 :]).abs().sum(-1)
        elif metric == "l2":
            c = torch.linalg.vector_norm(y - x[i + 1 :], dim=-1)
        else:
            c = deviation(y, x[0], x[-1]) - dev_teacher[i + 1 :]
        out[i, i + 1 :] = c.double().sum(-1)
    return out
