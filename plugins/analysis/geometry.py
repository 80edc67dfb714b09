"""Trajectory geometry: the quantities of the seed's ``diff-analyzer`` as pure functions.

Conventions: a trajectory is a tensor ``[num_points, batch, *shape]`` (what
``Solver.sample(..., return_trajectory=True)`` returns), point ``i`` at noise level
``sigmas[i]``; results are float64 numpy arrays ``[num_points, batch]`` unless said otherwise.

References: Chen et al. 2023, *A Geometric Perspective on Diffusion Models* (arXiv:2305.19947),
Sec. 3 and Fig. 2b (deviation from the chord, distance to the final sample, the denoising
trajectory); Chen et al. 2024, *On the Trajectory Regularity of ODE-based Diffusion Sampling*
(ICML, arXiv:2405.11326), Sec. 3 (low-dimensional trajectories) and Sec. 4 (GITS' step costs).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

if TYPE_CHECKING:
    import torch

    from diffsampler import Denoiser, Solver

__all__ = [
    "PCA",
    "ChordFrame",
    "TrajectoryPCA",
    "angles_between",
    "chord_frame",
    "chord_length",
    "denoising_trajectory",
    "deviation",
    "directions",
    "distance_to",
    "euler_truncation_error",
    "flatten",
    "pca",
    "refine_sigmas",
    "teacher_trajectory",
    "trajectory_pca",
]


def flatten(trajectory: Any) -> np.ndarray:
    """``[num_points, batch, dim]`` float64 numpy view of a trajectory tensor or array."""
    arr = trajectory.detach().cpu().numpy() if hasattr(trajectory, "detach") else trajectory
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim < 3:
        raise ValueError(f"a trajectory is [num_points, batch, *shape], got shape {arr.shape}")
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def chord_length(trajectory: Any) -> np.ndarray:
    """``||x_last - x_first||`` per trajectory, ``[batch]``."""
    flat = flatten(trajectory)
    return np.linalg.norm(flat[-1] - flat[0], axis=-1)


def deviation(trajectory: Any, *, relative: bool = False) -> np.ndarray:
    """Distance of every point from the straight line through the first and last point.

    The seed's ``utils.cal_deviation``: the L2 norm of the component of ``x_last - x_i``
    orthogonal to ``x_last - x_first`` (Chen et al. 2023, Fig. 2b, red curves). The seed returns
    the raw L2 distance for the inner points; here the endpoints are included (their deviation
    is zero). ``relative=True`` divides by the chord length ``||x_last - x_first||``, which makes
    models of different dimension and ``sigma_max`` comparable. Returns ``[num_points, batch]``.
    """
    flat = flatten(trajectory)
    chord = flat[-1] - flat[0]  # [B, d]
    length = np.linalg.norm(chord, axis=-1)  # [B]
    unit = chord / np.where(length > 0, length, 1.0)[:, None]
    to_end = flat[-1][None] - flat  # [P, B, d]
    along = np.einsum("pbd,bd->pb", to_end, unit)
    perp = to_end - along[..., None] * unit[None]
    out = np.linalg.norm(perp, axis=-1)
    if relative:
        out = out / np.where(length > 0, length, 1.0)[None]
    return out


def distance_to(trajectory: Any, target: Any) -> np.ndarray:
    """``||x_i - target||`` per point, ``[num_points, batch]``; ``target`` is ``[batch, *shape]``."""
    flat = flatten(trajectory)
    tgt = flatten(np.asarray(target.detach().cpu() if hasattr(target, "detach") else target)[None])[0]
    if tgt.shape != flat.shape[1:]:
        raise ValueError(f"target shape {tgt.shape} does not match the trajectory's {flat.shape[1:]}")
    return np.linalg.norm(flat - tgt[None], axis=-1)


def denoising_trajectory(
    denoiser: Denoiser,
    trajectory: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    *,
    cond: Any = None,
) -> torch.Tensor:
    """The denoising trajectory ``D(x_i; sigma_i)`` along a sampling trajectory (one NFE a point).

    Chen et al. 2023, Sec. 3.2: the x0 estimates form an implicit trajectory that steers the
    sampling trajectory. Returns a tensor shaped like ``trajectory`` (same dtype and device).
    """
    import torch

    levels = [float(s) for s in (sigmas.tolist() if hasattr(sigmas, "tolist") else sigmas)]
    if len(levels) != trajectory.shape[0]:
        raise ValueError(
            f"{trajectory.shape[0]} trajectory points but {len(levels)} sigmas: they must match"
        )
    out = []
    with torch.no_grad():
        for x, sigma in zip(trajectory, levels, strict=True):
            s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
            out.append(denoiser(x, s, cond))
    return torch.stack(out)


def directions(trajectory: Any, denoised: Any, sigmas: Sequence[float] | Any) -> np.ndarray:
    """The ODE directions ``d_i = (x_i - D(x_i; sigma_i)) / sigma_i``, ``[num_points, batch, dim]``."""
    flat, den = flatten(trajectory), flatten(denoised)
    levels = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    return (flat - den) / levels[:, None, None]


def angles_between(vectors: np.ndarray) -> np.ndarray:
    """Angle in degrees between consecutive vectors ``v_i`` and ``v_{i+1}``, ``[num-1, batch]``."""
    v = np.asarray(vectors, dtype=np.float64)
    a, b = v[:-1], v[1:]
    cos = np.einsum("pbd,pbd->pb", a, b) / (
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-300
    )
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


@attrs.frozen(kw_only=True)
class PCA:
    """Principal components of a point cloud ``[n, d]``.

    ``components`` ``[k, d]`` (orthonormal rows; a zero row where the points have no variance
    left, to rounding), ``explained`` ``[min(n - 1, d)]``: the share of
    the total variance each component explains (sums to one), ``coords`` ``[n, k]``.
    """

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray
    coords: np.ndarray


def pca(points: Any, k: int = 3) -> PCA:
    """PCA of ``points`` ``[n, d]`` through the eigen-decomposition of the ``n x n`` Gram matrix.

    Trajectories have few points (``n``) in many dimensions (``d``), so the Gram matrix is the
    cheap route; it gives the same components as an SVD of the centred points.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pca needs points [n >= 2, d], got shape {x.shape}")
    mean = x.mean(0)
    centred = x - mean
    gram = centred @ centred.T
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    rank = min(x.shape[0] - 1, x.shape[1])
    evals, evecs = evals[:rank], evecs[:, :rank]
    # Eigenvalues of the Gram matrix carry an absolute error of about eps * the largest: below
    # that they are rounding noise, and so would be their components (zero them instead).
    evals = np.where(evals > 1e-12 * (evals[0] if len(evals) else 0.0), evals, 0.0)
    total = evals.sum()
    explained = evals / total if total > 0 else np.zeros_like(evals)
    k = min(k, rank)
    scale = np.sqrt(np.where(evals[:k] > 0, evals[:k], np.inf))
    components = (centred.T @ evecs[:, :k] / scale).T  # [k, d], unit rows (zero: no variance)
    return PCA(mean=mean, components=components, explained=explained, coords=centred @ components.T)


@attrs.frozen(kw_only=True)
class TrajectoryPCA:
    """Each trajectory projected onto its own top principal components.

    ``coords`` ``[batch, num_points, k]`` with signs aligned across trajectories (component 1
    points from start to end; for the others the largest coordinate is positive), so that their
    shapes can be overlaid; ``explained`` ``[batch, r]``: per trajectory, the variance share of
    each component (sums to one per row); ``residual`` ``[batch, num_points]``: the distance of
    every point from its projection onto the top ``k`` components' affine subspace.
    """

    coords: np.ndarray
    explained: np.ndarray
    residual: np.ndarray

    def cumulative(self, k: int) -> np.ndarray:
        """Per trajectory, the share of variance the top ``k`` components explain, ``[batch]``."""
        return self.explained[:, :k].sum(1)


def trajectory_pca(trajectory: Any, k: int = 3) -> TrajectoryPCA:
    """PCA of every trajectory on its own (Chen et al. 2024, Sec. 3: trajectories lie in a
    low-dimensional subspace; the top components show one boomerang shape for every seed)."""
    flat = flatten(trajectory)
    coords, explained, residual = [], [], []
    for b in range(flat.shape[1]):
        res = pca(flat[:, b], k)
        c = res.coords.copy()
        centred = flat[:, b] - res.mean
        residual.append(np.linalg.norm(centred - c @ res.components, axis=-1))
        for j in range(c.shape[1]):
            ref = c[-1, j] - c[0, j] if j == 0 else c[np.argmax(np.abs(c[:, j])), j]
            if ref < 0:
                c[:, j] = -c[:, j]
        coords.append(c)
        explained.append(res.explained)
    width = max(len(e) for e in explained)
    padded = np.zeros((len(explained), width))
    for b, e in enumerate(explained):
        padded[b, : len(e)] = e
    kk = min(c.shape[1] for c in coords)
    return TrajectoryPCA(
        coords=np.stack([c[:, :kk] for c in coords]), explained=padded, residual=np.stack(residual)
    )


@attrs.frozen(kw_only=True)
class ChordFrame:
    """Trajectories in the seed's 3-D frame: the chord, then the deviation's top components.

    ``coords`` ``[batch, num_points, 1 + k]``: coordinate 0 along the unit chord (from start to
    end), coordinates 1..k on the top principal components of the deviation (the trajectory
    projected onto the chord's orthogonal complement), all relative to the final sample (the
    end sits at the origin); signs put the middle point at positive coordinates 1..k.
    ``deviation_explained`` ``[batch, r]``: per trajectory, the share of the deviation's
    variance each of its components explains (zeros for a straight line).
    """

    coords: np.ndarray
    deviation_explained: np.ndarray

    def cumulative(self, k: int) -> np.ndarray:
        """Share of the deviation's variance in its top ``k`` components, ``[batch]``."""
        return self.deviation_explained[:, :k].sum(1)


def chord_frame(trajectory: Any, k: int = 2) -> ChordFrame:
    """The seed's 3-D view of trajectories (``diff-analyzer`` ``main_extend.ipynb``).

    Basis: ``u_1`` = unit vector from the first to the last point; ``u_2, u_3, ...`` = the top
    principal components of the points projected onto the orthogonal complement of ``u_1``
    (Chen et al. 2024, Sec. 3, Fig. 2: every trajectory bends in a few directions only).
    """
    flat = flatten(trajectory)
    coords, shares = [], []
    for b in range(flat.shape[1]):
        pts = flat[:, b]
        chord = pts[-1] - pts[0]
        unit = chord / max(np.linalg.norm(chord), 1e-300)
        perp = pts - np.outer(pts @ unit, unit)
        rel = pts - pts[-1]
        spread = np.linalg.norm(perp - perp.mean(0))
        if spread <= 1e-12 * max(float(np.linalg.norm(rel)), 1e-300):  # a straight line (to rounding)
            coords.append(np.concatenate([(rel @ unit)[:, None], np.zeros((len(rel), k))], 1))
            shares.append(np.zeros(1))
            continue
        res = pca(perp, k)
        mid = rel[len(rel) // 2]
        basis = [unit]
        for comp in res.components:
            comp = comp - (comp @ unit) * unit  # exact orthogonality to the chord
            size = np.linalg.norm(comp)
            comp = comp / size if size > 0.5 else np.zeros_like(comp)
            basis.append(comp if mid @ comp >= 0 else -comp)
        c = rel @ np.stack(basis).T
        if c.shape[1] < 1 + k:
            c = np.concatenate([c, np.zeros((c.shape[0], 1 + k - c.shape[1]))], axis=1)
        coords.append(c)
        shares.append(res.explained)
    width = max(len(e) for e in shares)
    padded = np.zeros((len(shares), width))
    for b, e in enumerate(shares):
        padded[b, : len(e)] = e
    return ChordFrame(coords=np.stack(coords), deviation_explained=padded)


def refine_sigmas(sigmas: Sequence[float] | Any, substeps: int) -> np.ndarray:
    """Insert ``substeps`` noise levels in every interval, geometrically (uniform in log sigma)."""
    levels = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if substeps < 0:
        raise ValueError(f"substeps must be >= 0, got {substeps}")
    if (levels <= 0).any():
        raise ValueError("refine_sigmas needs positive sigmas")
    fine = [levels[0]]
    for hi, lo in itertools.pairwise(levels):
        inner = np.exp(np.linspace(np.log(hi), np.log(lo), substeps + 2))[1:]
        fine.extend(inner[:-1])
        fine.append(lo)  # exactly the coarse level
    return np.asarray(fine)


def teacher_trajectory(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | Any,
    *,
    solver: Solver,
    substeps: int,
    cond: Any = None,
) -> torch.Tensor:
    """A fine solve of the ODE from ``x`` at ``sigmas[0]``, read off at every coarse sigma.

    The teacher ``solver`` runs on :func:`refine_sigmas` (``substeps`` extra levels per interval),
    as GITS' teacher does (Chen et al. 2024, Sec. 4). Returns ``[len(sigmas), batch, *shape]``.
    """
    fine = refine_sigmas(sigmas, substeps)
    result = solver.sample(denoiser, x, fine.tolist(), cond=cond, return_trajectory=True)
    assert result.trajectory is not None
    return result.trajectory[:: substeps + 1]


def euler_truncation_error(
    denoiser: Denoiser,
    teacher: torch.Tensor,
    sigmas: Sequence[float] | Any,
    *,
    cond: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local truncation error of one Euler step on every interval of a schedule.

    From the teacher's point ``x*_i`` one Euler step ``x*_i + (sigma_{i+1} - sigma_i) d(x*_i)``
    is compared with the teacher's ``x*_{i+1}``; the error is the RMS over dimensions,
    ``[num_points - 1, batch]``. Also returns the directions ``d(x*_i)`` at every point
    ``[num_points, batch, dim]`` (for the angles between consecutive directions).
    """
    levels = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    den = denoising_trajectory(denoiser, teacher, levels.tolist(), cond=cond)
    d = directions(teacher, den, levels)
    flat = flatten(teacher)
    steps = np.diff(levels)[:, None, None]
    euler = flat[:-1] + steps * d[:-1]
    err = np.sqrt(np.mean((euler - flat[1:]) ** 2, axis=-1))
    return err, d
