"""The built-in analyses: ``deviation``, ``denoising``, ``pca``, ``curvature``.

Each turns a :class:`~.collect.Setup` (trajectories of many seeds) into per-step numbers, a
summary and one figure. The geometry is in :mod:`.geometry`; torch is imported when they run.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from diffsampler import in_range, option

from . import geometry as g
from .plotting import band, sigma_axis
from .registry import AnalysisResult, register_analysis

__all__ = ["Curvature", "Denoising", "Deviation", "TrajectoryPCAAnalysis"]


def _rms(dist: np.ndarray, dim: int) -> np.ndarray:
    return dist / math.sqrt(dim)


def _dim(setup: Any) -> int:
    return int(np.prod(setup.trajectory.shape[2:]))


def _mean_std(prefix: str, values: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{prefix}_mean": values.mean(1), f"{prefix}_std": values.std(1)}


def _first_below(sigmas: np.ndarray, curve: np.ndarray, level: float) -> dict[str, Any]:
    """The first point where ``curve`` is at or below ``level``: its index and sigma."""
    hit = np.nonzero(curve <= level)[0]
    if not len(hit):
        return {"step": None, "sigma": None}
    return {"step": int(hit[0]), "sigma": float(sigmas[hit[0]])}


# -- deviation ------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class DeviationOptions:
    denoising: bool = option(
        True, help="also the deviation of the denoising trajectory (one NFE per point)"
    )


@register_analysis
class Deviation:
    """Distance of each trajectory point from the straight line between start and end."""

    name: ClassVar[str] = "deviation"
    summary: ClassVar[str] = "deviation from the start-end chord, per step (Chen et al. 2023, Fig. 2b)"
    Options: ClassVar[type] = DeviationOptions

    def compute(self, setup: Any, options: DeviationOptions) -> AnalysisResult:
        traj = setup.trajectory
        dev = g.deviation(traj)
        rel = g.deviation(traj, relative=True)
        dist = g.distance_to(traj, traj[-1])
        table = {"sigma": setup.sigmas, **_mean_std("deviation", dev),
                 **_mean_std("relative_deviation", rel), **_mean_std("distance_to_final", dist)}
        arrays = {"relative_deviation": rel}
        peak = int(np.argmax(rel.mean(1)))
        summary: dict[str, Any] = {
            "chord_length_mean": float(g.chord_length(traj).mean()),
            "max_relative_deviation_mean": float(rel.mean(1)[peak]),
            "max_relative_deviation_sigma": float(setup.sigmas[peak]),
            "max_relative_deviation_worst_seed": float(rel.max()),
            "max_deviation_mean": float(dev.mean(1).max()),
        }
        if options.denoising:
            den = g.denoising_trajectory(setup.model, traj, setup.sigmas, cond=setup.cond)
            den_rel = g.deviation(den, relative=True)
            table.update(_mean_std("denoising_relative_deviation", den_rel))
            arrays["denoising_relative_deviation"] = den_rel
            summary["denoising_max_relative_deviation_mean"] = float(den_rel.mean(1).max())
        return AnalysisResult(kind=self.name, table=table, summary=summary, arrays=arrays)

    def plot(self, result: AnalysisResult, plt: Any) -> Any:
        t, s = result.table, result.table["sigma"]
        fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.0))
        ax = axes[0]
        for key, label, color in (("deviation", "deviation from chord", "C3"),
                                  ("distance_to_final", r"$\|x_i - x_N\|$", "C0")):
            m, sd = t[f"{key}_mean"], t[f"{key}_std"]
            ax.fill_between(s, m - sd, m + sd, color=color, alpha=0.2, lw=0)
            ax.plot(s, m, color=color, marker="o", ms=3, label=label)
        ax.set_ylabel(r"$L_2$ distance")
        ax.set_title("sampling trajectory")
        sigma_axis(ax)
        ax.legend(frameon=False)
        ax = axes[1]
        band(ax, s, result.arrays["relative_deviation"], label="sampling", color="C3")
        if "denoising_relative_deviation" in result.arrays:
            band(ax, s, result.arrays["denoising_relative_deviation"], label="denoising",
                 color="C2", marker="s")
        ax.set_ylabel(r"deviation / $\|x_N - x_0\|$")
        ax.set_title("relative deviation (mean $\\pm$ std over seeds)")
        sigma_axis(ax)
        ax.legend(frameon=False)
        fig.tight_layout()
        return fig


# -- denoising ------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class DenoisingOptions:
    images: int = option(
        1, help="seeds whose sampling/denoising images are shown (image-shaped models)",
        validator=in_range(0, 8),
    )
    columns: int = option(8, help="trajectory points shown per image row", validator=in_range(2, 32))
    threshold: float = option(
        0.05, help="report where the RMS distance to the final sample first falls below this",
        validator=in_range(0.0),
    )


@register_analysis
class Denoising:
    """The denoising trajectory D(x_i; sigma_i) next to the sampling trajectory x_i."""

    name: ClassVar[str] = "denoising"
    summary: ClassVar[str] = "sampling vs denoising trajectory: distance to the final sample per step"
    Options: ClassVar[type] = DenoisingOptions

    def compute(self, setup: Any, options: DenoisingOptions) -> AnalysisResult:
        traj, sig = setup.trajectory, setup.sigmas
        den = g.denoising_trajectory(setup.model, traj, sig, cond=setup.cond)
        final = traj[-1]
        dx, dd = g.distance_to(traj, final), g.distance_to(den, final)
        rx = dx / np.where(dx[:1] > 0, dx[:1], 1.0)
        rd = dd / np.where(dd[:1] > 0, dd[:1], 1.0)
        dim = _dim(setup)
        table = {"sigma": sig, **_mean_std("sampling_rms", _rms(dx, dim)),
                 **_mean_std("denoising_rms", _rms(dd, dim)),
                 **_mean_std("sampling_relative", rx), **_mean_std("denoising_relative", rd)}
        level = options.threshold
        inner = slice(1, len(sig) - 1)  # x_N itself is at distance zero from x_N
        mid = len(sig) // 2
        summary = {
            "threshold_rms": level,
            "sampling_first_below": _first_below(sig, _rms(dx, dim).mean(1), level),
            "denoising_first_below": _first_below(sig, _rms(dd, dim).mean(1), level),
            "share_of_points_denoising_closer": float((dd < dx)[inner].mean()) if len(sig) > 2 else None,
            "midpoint_sigma": float(sig[mid]),
            "sampling_rms_at_midpoint": float(_rms(dx, dim).mean(1)[mid]),
            "denoising_rms_at_midpoint": float(_rms(dd, dim).mean(1)[mid]),
        }
        arrays: dict[str, np.ndarray] = {"sampling_relative": rx, "denoising_relative": rd}
        shape = tuple(traj.shape[2:])
        if options.images and len(shape) == 3 and shape[0] in (1, 3):
            cols = np.unique(np.linspace(0, len(sig) - 1, min(options.columns, len(sig))).round().astype(int))
            n = min(options.images, traj.shape[1])
            arrays["_image_columns"] = cols
            arrays["_images_sampling"] = traj[cols, :n].double().cpu().numpy()
            arrays["_images_denoising"] = den[cols, :n].double().cpu().numpy()
        return AnalysisResult(kind=self.name, table=table, summary=summary, arrays=arrays)

    def plot(self, result: AnalysisResult, plt: Any) -> Any:
        t, s = result.table, result.table["sigma"]
        images = "_images_sampling" in result.arrays
        fig = plt.figure(figsize=(8.0, 5.6 if images else 3.0))
        grid = fig.add_gridspec(2 if images else 1, 2, height_ratios=[1.0, 0.9] if images else [1.0])
        ax = fig.add_subplot(grid[0, 0])
        for key, label, color, marker in (("sampling_rms", r"sampling $x_i$", "C0", "o"),
                                          ("denoising_rms", r"denoising $D(x_i;\sigma_i)$", "C2", "s")):
            m, sd = t[f"{key}_mean"], t[f"{key}_std"]
            keep = m > 0  # the last sampling point is x_N itself
            ax.fill_between(s[keep], np.maximum(m - sd, 0.2 * m)[keep], (m + sd)[keep],
                            color=color, alpha=0.2, lw=0)
            ax.plot(s[keep], m[keep], color=color, marker=marker, ms=3, label=label)
        ax.axhline(result.summary["threshold_rms"], color="k", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(r"RMS distance to final sample $x_N$")
        sigma_axis(ax)
        ax.legend(frameon=False)
        ax = fig.add_subplot(grid[0, 1])
        band(ax, s, result.arrays["sampling_relative"], label="sampling", color="C0")
        band(ax, s, result.arrays["denoising_relative"], label="denoising", color="C2", marker="s")
        ax.set_ylabel("distance to $x_N$ / its value at the start")
        sigma_axis(ax)
        ax.legend(frameon=False)
        if images:
            _image_rows(fig, grid[1, :], result.arrays, s)
        fig.tight_layout()
        return fig


def _to_rgb(img: np.ndarray) -> np.ndarray:
    img = np.clip((img + 1.0) / 2.0, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def _image_rows(fig: Any, cell: Any, arrays: dict[str, np.ndarray], sigmas: np.ndarray) -> None:
    cols = arrays["_image_columns"]
    samp, den = arrays["_images_sampling"], arrays["_images_denoising"]
    n = samp.shape[1]
    sub = cell.subgridspec(2 * n, len(cols), wspace=0.05, hspace=0.05)
    for r in range(2 * n):
        source, label = (samp, r"$x_i$") if r % 2 == 0 else (den, r"$D(x_i)$")
        for c, idx in enumerate(cols):
            ax = fig.add_subplot(sub[r, c])
            ax.imshow(_to_rgb(source[c, r // 2]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"$\\sigma$={sigmas[idx]:.3g}", fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)


# -- pca ------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class PCAOptions:
    components: int = option(
        5, help="principal components reported (the plots use 3)", validator=in_range(3, 16)
    )


@register_analysis
class TrajectoryPCAAnalysis:
    """Trajectories projected on their own top principal components (2-D and 3-D)."""

    name: ClassVar[str] = "pca"
    summary: ClassVar[str] = "trajectories on their top principal components; variance explained"
    Options: ClassVar[type] = PCAOptions

    def compute(self, setup: Any, options: PCAOptions) -> AnalysisResult:
        traj = setup.trajectory
        k = options.components
        res = g.trajectory_pca(traj, k)
        frame = g.chord_frame(traj, max(k - 1, 2))
        chord = g.chord_length(traj)
        rel_residual = res.residual / chord[:, None]
        ks = list(range(1, min(k, res.explained.shape[1]) + 1))
        table = {
            "component": np.asarray(ks),
            "cumulative_share_mean": np.asarray([res.cumulative(j).mean() for j in ks]),
            "cumulative_share_min": np.asarray([res.cumulative(j).min() for j in ks]),
            "deviation_share_mean": np.asarray([frame.cumulative(j).mean() for j in ks]),
            "deviation_share_min": np.asarray([frame.cumulative(j).min() for j in ks]),
        }
        summary: dict[str, Any] = {}
        for j in ks:
            summary[f"top{j}_share"] = {"mean": float(res.cumulative(j).mean()),
                                        "min": float(res.cumulative(j).min())}
        for j in ks:
            summary[f"deviation_top{j}_share"] = {"mean": float(frame.cumulative(j).mean()),
                                                  "min": float(frame.cumulative(j).min())}
        summary[f"max_residual_top{res.coords.shape[2]}_over_chord"] = float(rel_residual.max())
        arrays = {"coords": res.coords, "explained": res.explained,
                  "chord_frame": frame.coords, "deviation_explained": frame.deviation_explained,
                  "residual_over_chord": rel_residual}
        return AnalysisResult(kind=self.name, table=table, summary=summary, arrays=arrays)

    def plot(self, result: AnalysisResult, plt: Any) -> Any:
        frame = result.arrays["chord_frame"]
        share = result.arrays["deviation_explained"].mean(0)
        fig = plt.figure(figsize=(10.0, 3.2))
        ax = fig.add_subplot(1, 3, 1)
        for b in range(frame.shape[0]):
            ax.plot(frame[b, :, 0], frame[b, :, 1], lw=0.8, alpha=0.6, marker=".", ms=2)
        ax.set_xlabel(r"along the chord $x_0 \to x_N$ (end at 0)")
        ax.set_ylabel(f"deviation PC 1 ({100 * share[0]:.1f}% of deviation)")
        ax.set_title("every trajectory in its own frame")
        ax.grid(alpha=0.3)
        ax = fig.add_subplot(1, 3, 2, projection="3d")
        for b in range(frame.shape[0]):
            ax.plot(frame[b, :, 0], frame[b, :, 1], frame[b, :, 2], lw=0.8, alpha=0.6)
        ax.set_xlabel("chord", labelpad=-8)
        ax.set_ylabel("dev. PC 1", labelpad=-8)
        ax.set_zlabel("dev. PC 2", labelpad=-8)
        ax.tick_params(labelsize=6, pad=-2)
        ax.set_title("chord + top-2 deviation PCs")
        ax = fig.add_subplot(1, 3, 3)
        ks = result.table["component"]
        ax.plot(ks, 1.0 - result.table["cumulative_share_mean"], marker="o", color="C0",
                label="trajectory, mean")
        ax.plot(ks, 1.0 - result.table["deviation_share_mean"], marker="s", color="C3",
                label="deviation only, mean")
        ax.plot(ks, 1.0 - result.table["deviation_share_min"], marker="s", ls="--", color="C3",
                alpha=0.6, label="deviation only, worst seed")
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.set_xlabel("components kept $k$")
        ax.set_ylabel("variance left unexplained")
        ax.set_title("1 - share of the top-$k$ PCs")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, loc="lower left", fontsize=7)
        fig.tight_layout()
        return fig


# -- curvature ------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class CurvatureOptions:
    teacher: str = option("heun", help="solver of the fine teacher trajectory")
    substeps: int = option(
        8, help="levels the teacher inserts in every interval of the schedule", validator=in_range(0, 1000)
    )


@register_analysis
class Curvature:
    """Per step of a schedule: the turn of the ODE direction and Euler's local error."""

    name: ClassVar[str] = "curvature"
    summary: ClassVar[str] = "per step: angle between consecutive directions, Euler local error vs a teacher"
    Options: ClassVar[type] = CurvatureOptions

    def compute(self, setup: Any, options: CurvatureOptions) -> AnalysisResult:
        from diffsampler import get_solver

        teacher = g.teacher_trajectory(
            setup.model, setup.trajectory[0], setup.sigmas, solver=get_solver(options.teacher),
            substeps=options.substeps, cond=setup.cond,
        )
        err, d = g.euler_truncation_error(setup.model, teacher, setup.sigmas, cond=setup.cond)
        angles = g.angles_between(d)
        sig = setup.sigmas
        table = {"sigma_from": sig[:-1], "sigma_to": sig[1:], **_mean_std("angle_deg", angles),
                 **_mean_std("euler_error_rms", err)}
        worst = int(np.argmax(err.mean(1)))
        turn = int(np.argmax(angles.mean(1)))
        summary = {
            "teacher": options.teacher,
            "teacher_substeps": options.substeps,
            "largest_angle_deg": float(angles.mean(1)[turn]),
            "largest_angle_interval": [float(sig[turn]), float(sig[turn + 1])],
            "largest_euler_error": float(err.mean(1)[worst]),
            "largest_euler_error_interval": [float(sig[worst]), float(sig[worst + 1])],
            "total_euler_error": float(err.mean(1).sum()),
            "teacher_vs_trajectory_rms": float(
                np.sqrt(np.mean((g.flatten(teacher)[-1] - g.flatten(setup.trajectory)[-1]) ** 2))
            ),
        }
        arrays = {"angle_deg": angles, "euler_error_rms": err}
        return AnalysisResult(kind=self.name, table=table, summary=summary, arrays=arrays)

    def plot(self, result: AnalysisResult, plt: Any) -> Any:
        s = result.table["sigma_from"]
        fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.0))
        band(axes[0], s, result.arrays["angle_deg"], label=r"angle$(d_i, d_{i+1})$", color="C4")
        axes[0].set_ylabel("degrees")
        axes[0].set_title("turn of the ODE direction per step")
        band(axes[1], s, np.maximum(result.arrays["euler_error_rms"], 1e-16),
             label="Euler step vs teacher", color="C1", marker="s")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("local error (RMS per dimension)")
        axes[1].set_title("local truncation error of one Euler step")
        for ax in axes:
            sigma_axis(ax)
            ax.set_xlabel(r"$\sigma_i$ at the start of the step")
            ax.legend(frameon=False)
        fig.tight_layout()
        return fig
