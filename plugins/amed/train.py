"""The ``amed`` distiller: train a predictor against a teacher run (Zhou et al. CVPR 2024,
arXiv:2312.00094, Sec. 3.3 and Alg. 1, as the seed's ``train.py`` / ``training/loss.py``).

Every iteration draws a batch of noise, runs the teacher on the student's schedule refined by
``M`` points per interval, and walks the student's steps one by one: step ``k`` is trained by
one Adam update on ``sum ||x_student - x_teacher||^2 / batch`` at ``t_{k+1}``, then the next step
starts from the teacher's point (single-step students: amed, euler, dpm) or from the student's
own output (multistep students: ipndm, dpmpp), as in the seed. Gradients reach the predictor
through the second evaluation of each step (at the learned time); the network is frozen. A
class-conditional network gets a random class per trajectory by default, as the seed (option
``labels``; drawn per seed here, per iteration there).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from diffsampler import get_schedule, get_solver
from diffsampler.errors import OptionError
from diffsampler.options import build_options, options_as_dict
from diffsampler.protocols import HasBottleneck
from diffsampler.seeds import seed_noise

from .options import AMEDOptions
from .predictor import AMEDPredictor, load_predictor, model_identity
from .steps import AMEDStepper

__all__ = ["AMED", "ModelEvaluator", "schedule_pair", "step_losses", "training_schedule"]

Progress = Callable[[Mapping[str, float]], None]
_SINGLE_STEP = ("amed", "euler", "dpm")


class ModelEvaluator:
    """Reaches the model directly (no NFE count): the first evaluation without gradient,
    AFS on the first step only (zero feature), the second with gradient."""

    def __init__(self, model: Any, *, afs_step0: bool, cond: Any = None) -> None:
        self.model = model
        self.afs_step0 = afs_step0
        self.cond = cond
        self.index = 0

    def first(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor | None]:
        if self.afs_step0 and self.index == 0:
            return x - (sigma / math.sqrt(1.0 + sigma * sigma)) * x, None
        s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        return self.model.denoise_with_features(x, s, self.cond)

    def mid(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.model(x, sigma, self.cond)


def training_schedule(options: AMEDOptions) -> tuple[Any, dict[str, Any]]:
    """The schedule of student and teacher (with ``rho`` where it takes one) and its options.

    AMED needs one computed for any number of points (the teacher's grid refines the
    student's): a schedule read from a file (``gits``, ``sfd``: it has a ``file`` option)
    holds one count of sigmas and is refused.
    """
    sched_opts: dict[str, Any] = {"rho": options.rho}
    try:
        schedule = get_schedule(options.schedule, **sched_opts)
    except OptionError:
        sched_opts = {}
        schedule = get_schedule(options.schedule)
    if "file" in options_as_dict(getattr(schedule, "options", None)):
        raise OptionError(
            f"AMED trains on a schedule computed for any number of points, such as polynomial, "
            f"logsnr or time_uniform; {options.schedule!r} reads a fixed list of sigmas from a file"
        )
    return schedule, sched_opts


def schedule_pair(model: Any, options: AMEDOptions) -> tuple[tuple[float, ...], tuple[float, ...], dict[str, Any]]:
    """``(student sigmas, teacher sigmas, schedule options)``: the teacher grid is the same
    schedule with ``(M + 1)(num_steps - 1) + 1`` points, which must contain the student's."""
    schedule, sched_opts = training_schedule(options)
    n = options.num_steps
    fine = (options.m + 1) * (n - 1) + 1
    student = tuple(float(s) for s in schedule.sigmas(n, model.sigma_min, model.sigma_max, model))
    teacher = tuple(float(s) for s in schedule.sigmas(fine, model.sigma_min, model.sigma_max, model))
    picked = teacher[:: options.m + 1]
    if not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(student, picked, strict=True)):
        raise OptionError(
            f"schedule {options.schedule!r} with {fine} points does not contain its {n}-point "
            "grid; AMED needs a schedule whose finer grid refines the student's"
        )
    return student, teacher, sched_opts


def _teacher_solver(options: AMEDOptions) -> Any:
    extra: dict[str, Any] = {}
    if options.teacher == "ipndm":
        extra = {"max_order": options.max_order}
    elif options.teacher == "dpmpp":
        extra = {"max_order": min(options.max_order, 3), "predict_x0": options.predict_x0,
                 "lower_order_final": options.lower_order_final, "thresholding": options.thresholding}
    return get_solver(options.teacher, **extra)


def _device(model: Any, device: str | torch.device | None) -> torch.device:
    """``device``, else the model's own (CPU for a model that has none)."""
    return torch.device(device) if device is not None else getattr(model, "device", torch.device("cpu"))


def step_losses(
    model: Any, predictor: AMEDPredictor, latents: Tensor, teacher_points: Tensor,
    sigmas: tuple[float, ...], *, optimizer: torch.optim.Optimizer | None = None,
    progress: Progress | None = None, info: Mapping[str, float] | None = None, cond: Any = None,
) -> list[float]:
    """Walk the student's steps against ``teacher_points[k]`` (the teacher at ``sigmas[k+1]``),
    every evaluation conditioned on ``cond`` (the batch's labels, as the teacher's).

    With ``optimizer``, each step takes one update (training); without, nothing changes
    (evaluation). Returns each step's loss: the mean over the batch of ``||x_s - x_t||_2``
    (the number the seed prints).
    """
    s = predictor.settings
    student = predictor.student
    stepper = AMEDStepper(student, s, sigmas)
    ev = ModelEvaluator(model, afs_step0=bool(s["afs"]), cond=cond)
    params = [p for p in predictor.parameters() if p.requires_grad]
    x = latents
    out: list[float] = []
    batch = latents.shape[0]
    for k in range(len(sigmas) - 1):
        ev.index = k
        with torch.set_grad_enabled(optimizer is not None):
            x_next, (r, sd, st) = stepper.step(x, k, ev, predictor)
            diff = x_next - teacher_points[k]
            loss = diff.square().sum() / batch
        if optimizer is not None:
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = None if g is None else torch.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5)
            optimizer.step()
        value = float(diff.detach().flatten(1).norm(dim=1).mean())
        out.append(value)
        r, sd, st = r.detach(), sd.detach(), st.detach()
        if progress is not None:
            progress({
                **(info or {}), "step": k, "steps": len(sigmas) - 1, "loss": value,
                "r_mean": float(r.mean()), "r_std": float(r.std()) if batch > 1 else 0.0,
                "scale_dir_mean": float(sd.mean()), "scale_dir_std": float(sd.std()) if batch > 1 else 0.0,
                "scale_time_mean": float(st.mean()), "scale_time_std": float(st.std()) if batch > 1 else 0.0,
            })
        x = teacher_points[k] if student in _SINGLE_STEP else x_next.detach()
    return out


class AMED:
    """The ``amed`` distiller: ``distill(model)`` trains and returns an :class:`AMEDPredictor`."""

    def __init__(self, **options: Any) -> None:
        self.options: AMEDOptions = build_options(AMEDOptions, options, owner="distiller amed")
        training_schedule(self.options)  # refuse an unusable schedule before any model is loaded

    def teacher_points(
        self, model: Any, latents: Tensor, teacher_sigmas: tuple[float, ...], *, cond: Any = None,
    ) -> Tensor:
        """The teacher's states at the student's sigmas after the first: ``[steps, B, ...]``."""
        res = _teacher_solver(self.options).sample(model, latents, teacher_sigmas, cond=cond,
                                                   return_trajectory=True)
        assert res.trajectory is not None
        return res.trajectory[self.options.m + 1 :: self.options.m + 1]

    def distill(
        self, teacher: Any, *, progress: Progress | None = None, model_name: str | None = None,
        model_options: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
        stop: Callable[[], bool] | None = None, cond: Any = None,
    ) -> AMEDPredictor:
        """Train a predictor for ``teacher``. ``stop()`` is asked between iterations: when it says
        True, training ends there and the predictor trained so far is returned (its settings
        record ``iterations`` done of ``iterations_planned``).

        ``cond``: ``None`` (the option ``labels`` decides: by default a random class per seed for
        a class-conditional model, as the seed), one conditioning for every trajectory, or a
        callable ``cond(seeds) -> conditioning`` for an iteration's seeds. The choice is recorded
        in the predictor's settings (``labels``).
        """
        from diffsampler.labels import labels_cond

        o = self.options
        if not isinstance(teacher, HasBottleneck):
            raise OptionError(
                f"AMED reads the network's bottleneck features; model {type(teacher).__name__} has "
                "none (analytic models are not supported: use a neural model such as digits)"
            )
        name = model_name or str(getattr(teacher, "name", None) or type(teacher).__name__)
        # before any work: the model refuses a labels choice it cannot take in one line
        cond, labels = labels_cond(o.labels, teacher, model_name=name, device=_device(teacher, device),
                                   first_seed=o.seed, cond=cond)
        predictor, fine = self.initial_predictor(teacher, model_name=model_name,
                                                 model_options=model_options, device=device)
        predictor.settings["labels"] = labels
        sigmas = tuple(predictor.settings["sigmas"])
        dev = predictor.fc_r.weight.device
        optimizer = torch.optim.Adam(predictor.parameters(), lr=o.lr, betas=(0.9, 0.999), eps=1e-8)
        iterations = max(1, math.ceil(o.total_kimg * 1000 / o.batch))
        start = time.perf_counter()
        done = 0
        for it in range(iterations):
            if stop is not None and stop():
                break
            seeds = range(o.seed + it * o.batch, o.seed + (it + 1) * o.batch)
            latents = seed_noise(seeds, teacher.shape, device=dev) * sigmas[0]
            c = cond(tuple(seeds)) if callable(cond) else cond
            with torch.no_grad():
                points = self.teacher_points(teacher, latents, fine, cond=c)
            step_losses(teacher, predictor, latents, points, sigmas, optimizer=optimizer,
                        progress=progress, info={"iteration": it, "iterations": iterations}, cond=c)
            done = it + 1
        predictor.settings["train_seconds"] = round(time.perf_counter() - start, 3)
        predictor.settings["iterations"] = done
        predictor.settings["iterations_planned"] = iterations
        return predictor.eval()

    def initial_predictor(
        self, teacher: Any, *, model_name: str | None = None,
        model_options: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
    ) -> tuple[AMEDPredictor, tuple[float, ...]]:
        """The untrained predictor (settings, model identity, seeded init) and the teacher grid."""
        o = self.options
        sigmas, fine, sched_opts = schedule_pair(teacher, o)
        dev = _device(teacher, device)
        settings = {**options_as_dict(o), "sigmas": list(sigmas), "schedule_options": sched_opts}
        name = model_name or str(getattr(teacher, "name", type(teacher).__name__))
        identity = model_identity(teacher, name=name, options=dict(model_options or {}))
        return AMEDPredictor(settings, identity, hidden_dim=o.hidden_dim, seed=o.seed).to(dev), fine

    def load(self, path: str | os.PathLike[str]) -> AMEDPredictor:
        return load_predictor(path)
