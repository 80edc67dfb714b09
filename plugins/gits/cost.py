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
        return _dev_sums(x, d, sigmas)
    for i in range(n - 1):
        h = (s[i + 1 :] - s[i]).reshape(-1, 1, 1)
        y = x[i] + h * d[i]  # [N-1-i, B, D]: one Euler step to every later point
        if metric == "l1":
            c = (y - x[i + 1 :]).abs().sum(-1)
        else:
            c = torch.linalg.vector_norm(y - x[i + 1 :], dim=-1)
        out[i, i + 1 :] = c.double().sum(-1)
    return out


def _dev_sums(x: Tensor, d: Tensor, sigmas: list[float]) -> Tensor:
    """``dev`` without forming the ``N^2`` stepped points: for ``y = x_i + h d_i`` and the unit
    axis ``u`` of the line, ``|end - y|^2 = |e|^2 - 2h e.d + h^2 |d|^2`` (``e = end - x_i``) and
    its component along ``u`` is ``e.u - h d.u``; the deviation is the root of the difference.
    Five dot products per point (in float64, so the difference keeps its digits) instead of one
    pass over ``[N, B, D]`` per point: the cost matrix is then cheap next to the teacher."""
    import torch

    n = x.shape[0]
    xd, dd = x.double(), d.double()
    start, end = xd[0], xd[-1]
    axis = end - start
    unit = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    dev_teacher = deviation(xd, start, end)  # [N, B]
    dev_teacher[-1] = 0.0  # the seed appends 0 for the end point
    s = torch.tensor(sigmas, dtype=torch.float64, device=x.device)
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    for i in range(n - 1):
        e, di = end - xd[i], dd[i]
        ee, ed, dsq = (e * e).sum(-1), (e * di).sum(-1), (di * di).sum(-1)
        eu, du = (e * unit).sum(-1), (di * unit).sum(-1)
        h = (s[i + 1 :] - s[i]).reshape(-1, 1)  # [N-1-i, 1]
        rel2 = ee - 2 * h * ed + h * h * dsq
        along = eu - h * du
        dev = (rel2 - along * along).clamp_min(0.0).sqrt()
        out[i, i + 1 :] = (dev - dev_teacher[i + 1 :]).sum(-1)
    return out
