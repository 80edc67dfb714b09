"""The dynamic program of GITS (Chen et al. ICML 2024, arXiv:2405.11326, Sec. 5, Alg. 1).

Given a cost matrix ``C[i, j]`` between the points of a teacher's time grid (``0 .. N-1``, the
cost of one step from ``i`` to ``j``), choose ``K = num_steps - 1`` steps
``0 = p_0 < p_1 < ... < p_K = N-1`` minimising

    sum_{s=0}^{K-1} coeff^s * C[p_s, p_{s+1}]

exactly as the seed (``gits_utils.dp``) does: ``V[i, 1] = C[i, N-1]`` and
``V[j, k] = min_{j < i < N-1} C[j, i] + coeff * V[i, k-1]`` -- so ``coeff`` multiplies the cost of
everything after the first step, and step ``s`` counted from the start carries ``coeff^s``.
Ties go to the smallest index (the seed's first match when it backtracks). One pass gives the
best path for every ``K`` up to its maximum; the matrix does not depend on ``coeff``.
"""

from __future__ import annotations

import itertools

import attrs
import numpy as np

from diffsampler.errors import OptionError

__all__ = ["DPTable", "dp_path", "dp_table", "path_cost"]


@attrs.frozen(kw_only=True)
class DPTable:
    """``value[j, k]``: the best weighted cost of ``k`` steps from point ``j`` to the end;
    ``choice[j, k]``: the next point on that best path."""

    value: np.ndarray
    choice: np.ndarray
    coeff: float

    def path(self, num_steps: int) -> list[int]:
        """The best ``num_steps`` indices (``num_steps - 1`` steps) from 0 to the last point."""
        k_max = self.value.shape[1] - 1
        n = self.value.shape[0]
        if not 2 <= num_steps <= k_max + 1:
            raise OptionError(f"num_steps must be in 2..{k_max + 1} for this table, got {num_steps}")
        if not np.isfinite(self.value[0, num_steps - 1]):
            raise OptionError(
                f"cannot choose {num_steps} of {n} teacher points: need num_steps <= {n}"
            )
        out, w = [0], 0
        for k in range(num_steps - 1, 1, -1):
            w = int(self.choice[w, k])
            out.append(w)
        out.append(n - 1)
        return out

    def cost(self, num_steps: int) -> float:
        return float(self.value[0, num_steps - 1])


def _check(cost: np.ndarray, num_steps: int, coeff: float) -> np.ndarray:
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise OptionError(f"the cost matrix must be square with >= 2 points, got shape {c.shape}")
    if not np.isfinite(c[np.triu_indices(c.shape[0], 1)]).all():
        raise OptionError("the cost matrix has non-finite entries above the diagonal")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 2:
        raise OptionError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    if num_steps > c.shape[0]:
        raise OptionError(
            f"cannot choose {num_steps} points from a teacher grid of {c.shape[0]}: "
            f"raise teacher_steps or lower num_steps"
        )
    if not (isinstance(coeff, int | float) and np.isfinite(coeff) and coeff > 0):
        raise OptionError(f"coeff must be a positive number, got {coeff!r}")
    return c


def dp_table(cost: np.ndarray, max_steps: int, coeff: float) -> DPTable:
    """Fill the DP table for every path of up to ``max_steps`` points (``max_steps - 1`` steps)."""
    c = _check(cost, max_steps, coeff)
    n, k_max = c.shape[0], max_steps - 1
    value = np.full((n, k_max + 1), np.inf)
    choice = np.full((n, k_max + 1), -1, dtype=np.int64)
    value[:, 1] = c[:, n - 1]
    choice[:, 1] = n - 1
    for k in range(2, k_max + 1):
        for j in range(n - 2):
            cand = c[j, j + 1 : n - 1] + coeff * value[j + 1 : n - 1, k - 1]
            best = int(np.argmin(cand))  # first minimum: the seed's tie-break
            if np.isfinite(cand[best]):
                value[j, k] = cand[best]
                choice[j, k] = j + 1 + best
    return DPTable(value=value, choice=choice, coeff=float(coeff))


def dp_path(cost: np.ndarray, num_steps: int, coeff: float) -> list[int]:
    """The seed's ``dp(cost_mat, num_steps, num_steps_tea, coeff)``: ``num_steps`` indices."""
    return dp_table(cost, num_steps, coeff).path(num_steps)


def path_cost(cost: np.ndarray, path: list[int], coeff: float) -> float:
    """``sum_s coeff^s C[p_s, p_{s+1}]``, the objective the DP minimises."""
    c = np.asarray(cost, dtype=np.float64)
    return float(sum(coeff**s * c[a, b] for s, (a, b) in enumerate(itertools.pairwise(path))))
