"""SFD training: per-step L1 distillation of Euler steps onto a finer teacher trajectory.

Zhou et al. 2024, "Simple and Fast Distillation of Diffusion Models" (NeurIPS 2024,
arXiv:2409.19681), Sec. 4 and Algorithm 1. For every batch of noise the teacher solver runs on a
polynomial schedule with ``(M + 1) * (N - 1) + 1`` points (``M`` points inserted between the
student's ``N``); the student, a copy of the teacher network, then takes Euler steps along its
own ``N`` points, one at a time from its own (detached) previous output, and after each step
``|x_student - x_teacher|_1`` is minimised by one Adam update. With AFS the first step is the
analytical ``d = x / sqrt(1 + sigma^2)``: no network, no update (as the seed). The learning
rate drops tenfold after ``lr_drop`` of the training (seed: half). Both grids span the seed's
sigma 80 -> 0.006, and options left ``None`` follow the seed's rules (:func:`with_seed_rules`).

SFD-v (``step_condition``): the student gets a second embedding, of its number of sigmas
``N``, and every batch draws ``N`` from ``min_steps..max_steps`` (seed: 4..7), so one network
serves 2-5 NFE. The second stage (1 NFE; the teacher an SFD student sampled with Euler) adds an
LPIPS term on the last step, as the seed.

Noise of iteration ``k`` row ``j`` comes from seed ``seed + k * batch + j`` (per-seed
generators), its class (class-conditional teachers) from the same seed, and SFD-v's step count
from ``(seed, k)``, so a resumed run sees exactly the data the uninterrupted run would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

import diffsampler as ds
from diffsampler import tensorfile
from diffsampler.distributed import all_reduce_sum, current, shard
from diffsampler.errors import ModelLoadError, OptionError
from diffsampler.options import options_as_dict
from diffsampler.plugins.edm.checkpoint import build_from_config, config_of, load_state_dict_strict
from diffsampler.plugins.edm.denoiser import EDMDenoiser

from .format import PAPER
from .options import (
    SEED_SIGMA_MAX,
    SEED_SIGMA_MIN,
    SEED_TEACHER,
    SEED_TEACHER_OPTIONS,
    SFDOptions,
    parse_pairs_text,
    sigma_order_error,
)
from .student import SFDStudent

__all__ = ["CHECKPOINT_FORMAT", "SFDTrainer", "fingerprint", "noise_range", "trained_labels", "with_seed_rules"]

CHECKPOINT_FORMAT = "diffsampler.sfd.checkpoint/1"
# options that may differ between a checkpoint and the run that resumes it
_FREE_ON_RESUME = ("device",)


def fingerprint(net: torch.nn.Module) -> str:
    """SHA-256 of a network's state (names, shapes, dtypes and bytes): the teacher's identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _same(a: list[float] | tuple[float, ...], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(u, v, rel_tol=1e-9) for u, v in zip(a, b, strict=True))


def noise_range(options: SFDOptions, teacher: EDMDenoiser) -> tuple[float, float]:
    """The ``(sigma_min, sigma_max)`` of the student and teacher grids.

    Unset, the seed's: 0.006..80 for a pixel-space EDM teacher (``training_loop.py``; kept inside
    the teacher's own range), or an SFD student teacher's own range (the seed's second stage reads
    the stage-1 network's). A value set explicitly must lie inside the teacher's range; with an
    SFD student teacher it must be the student's own (its sigmas are the teacher grid).
    """
    if isinstance(teacher, SFDStudent):
        return _student_teacher_range(options, teacher)
    lo = max(SEED_SIGMA_MIN, teacher.sigma_min) if options.sigma_min is None else options.sigma_min
    hi = min(SEED_SIGMA_MAX, teacher.sigma_max) if options.sigma_max is None else options.sigma_max
    tol = 1e-9
    widen = [f"--model-opt sigma_min={lo:g}"] if lo < teacher.sigma_min * (1 - tol) else []
    widen += [f"--model-opt sigma_max={hi:g}"] if hi > teacher.sigma_max * (1 + tol) else []
    if widen:
        raise OptionError(
            f"SFD's sigma range {lo:g}..{hi:g} leaves the teacher's {teacher.sigma_min:g}..{teacher.sigma_max:g}: "
            f"pick sigma_min/sigma_max inside it, or widen the teacher's ({' '.join(widen)})"
        )
    empty = sigma_order_error(lo, hi)
    if empty:
        raise OptionError(empty)
    return float(lo), float(hi)


def _student_teacher_range(options: SFDOptions, teacher: SFDStudent) -> tuple[float, float]:
    """The second stage's range: the SFD student teacher's own. Its sigmas are fixed by its
    training (the teacher grid must be one of them), so another range cannot work."""
    lo, hi = teacher.sigma_min, teacher.sigma_max
    given = {"--sigma-min": (options.sigma_min, lo), "--sigma-max": (options.sigma_max, hi)}
    other = [flag for flag, (v, own) in given.items() if v is not None and not math.isclose(v, own, rel_tol=1e-9)]
    if other:
        raise OptionError(
            f"an SFD student teacher is sampled on the sigmas it was trained on ({lo:g}..{hi:g}), so the "
            f"second stage uses that range: drop {'/'.join(other)}"
        )
    return float(lo), float(hi)


def _grid_mismatch(teacher: SFDStudent, trained: tuple[float, ...], grid: list[float]) -> str:
    """Why an SFD student teacher's sigmas are not this run's teacher grid of the same length."""
    head = f"the teacher is an SFD student trained on {len(trained)} sigmas {trained[-1]:g}..{trained[0]:g}"
    if not (_same([trained[0], trained[-1]], [grid[0], grid[-1]])):
        return (f"{head}; this run's teacher grid spans {grid[-1]:g}..{grid[0]:g}: "
                "drop --sigma-min/--sigma-max (the second stage uses the teacher's range)")
    rho = teacher.settings.get("rho")
    was = f" (--rho {rho:g})" if isinstance(rho, (int, float)) else ""
    return f"{head}; this run's {len(grid)} sigmas over that range are spaced differently: use its rho{was}"


def trained_labels(choice: str, teacher: EDMDenoiser) -> str:
    """The labels the training trajectories get, as recorded in the student (``settings.labels``).

    ``auto`` follows :func:`diffsampler.labels.resolve_labels` (random for a class-conditional
    teacher without a ``class_label``, as the seed), except that an SFD student teacher keeps
    the labels it was trained on. No labels on a teacher with a fixed ``class_label`` (the model
    option) is that class, recorded as its index so that sampling the student uses it too.
    """
    from diffsampler.labels import label_text, resolve_labels

    if choice == "auto" and isinstance(teacher, SFDStudent) and teacher.class_label is None:
        return label_text(teacher.sampling_defaults.get("labels"))
    resolved = resolve_labels(choice, teacher)
    if resolved is None and teacher.label_dim and teacher.class_label is not None:
        return str(teacher.class_label)
    return label_text(resolved)


def with_seed_rules(options: SFDOptions, teacher: EDMDenoiser) -> SFDOptions:
    """``options`` with every "the seed's rule" (``None``) made concrete for ``teacher``.

    First stage: teacher ``dpmpp`` with ``max_order=3`` and dynamic thresholding (the seed's
    ``dpm_pp_sampler`` always thresholds), no AFS. Second stage (``teacher`` an SFD student): the
    seed forces Euler with the student's own AFS (``loss.py``, ``is_second_stage``). Options set
    explicitly are kept, and ``labels`` becomes the choice trained (:func:`trained_labels`).
    ``lpips`` keeps its own rule (see :class:`SFDTrainer`).
    """
    student = isinstance(teacher, SFDStudent)
    solver = options.teacher or ("euler" if student else SEED_TEACHER)
    solver_options = options.teacher_options or (SEED_TEACHER_OPTIONS if solver == SEED_TEACHER else "")
    afs = options.teacher_afs if options.teacher_afs is not None else (bool(teacher.afs) if student else False)
    lo, hi = noise_range(options, teacher)
    return attrs.evolve(
        options, teacher=solver, teacher_options=solver_options, teacher_afs=afs, sigma_min=lo, sigma_max=hi,
        labels=trained_labels(options.labels, teacher),
    )


def has_step_condition(net: torch.nn.Module) -> bool:
    """Whether an EDM network was built with SFD-v's step embedding."""
    return getattr(getattr(net, "model", None), "map_step", None) is not None


def student_network(teacher: torch.nn.Module, *, step_condition: bool, seed: int) -> torch.nn.Module:
    """The student's initial network: a copy of the teacher; for SFD-v (when the teacher has no
    step embedding yet) the same architecture with ``step_condition=True``, the teacher's weights
    and the new step layers initialised as EDM initialises them (from ``seed``: reproducible)."""
    if not step_condition or has_step_condition(teacher):
        return copy.deepcopy(teacher)
    config = config_of(teacher)
    config["init_kwargs"]["step_condition"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_from_config(config, source="the SFD-v student")
    new = {k: v for k, v in net.state_dict().items() if "map_step" in k or "affine_step" in k}
    load_state_dict_strict(net, {**teacher.state_dict(), **new}, source="the teacher network")
    return net.to(next(teacher.parameters()).device)


class SFDTrainer:
    """The state of one SFD training run: student, optimizer, EMA, iteration, loss history."""

    def __init__(self, teacher: EDMDenoiser, options: SFDOptions, *, teacher_info: Mapping[str, Any] | None = None) -> None:
        if not isinstance(teacher, EDMDenoiser):
            raise OptionError(
                f"SFD fine-tunes an EDM network (models digits, edm-*, or an EDM file); got {type(teacher).__name__}"
            )
        from diffsampler.labels import labels_cond

        options = with_seed_rules(options, teacher)
        self.options = options
        self.sigma_min, self.sigma_max = noise_range(options, teacher)
        self.dist = current()
        self.device = torch.device(options.device)
        name = str((teacher_info or {}).get("name") or teacher.name)
        # before any work: the teacher refuses a labels choice it cannot take, in one line
        self._label_fn, _ = labels_cond(options.labels, teacher, model_name=name, device=self.device,
                                        first_seed=options.seed)
        self.teacher = copy.copy(teacher)
        self.teacher.net = teacher.net.to(self.device).eval().requires_grad_(False)
        self.conditioned = options.step_condition or has_step_condition(self.teacher.net)
        net = student_network(self.teacher.net, step_condition=self.conditioned, seed=options.seed)
        net.requires_grad_(True)
        net.eval()  # dropout off: the targets are deterministic (the seed trains in train mode)
        self.student = copy.copy(self.teacher)
        self.student.net = net
        self.ema_net: torch.nn.Module | None = None
        if options.ema > 0:
            self.ema_net = copy.deepcopy(net).requires_grad_(False)
        self.teacher_info = dict(teacher_info or {})
        self.teacher_info["fingerprint"] = fingerprint(self.teacher.net)
        self._schedule = ds.get_schedule(options.schedule, rho=options.rho)
        self._grids: dict[int, tuple[list[float], torch.Tensor]] = {}
        for n in options.step_counts:
            self._check_student_teacher(teacher, len(self.grid(n)[1]))
        self.sigmas, self.teacher_sigmas = self.grid(options.num_steps)
        self.lpips_weight = options.lpips if options.lpips is not None else (1.0 if isinstance(teacher, SFDStudent) else 0.0)
        self._lpips: torch.nn.Module | None = None
        if self.lpips_weight > 0:
            from .lpips import load_lpips

            try:
                self._lpips = load_lpips(vgg=options.lpips_vgg, lin=options.lpips_lin, device=self.device)
            except ModelLoadError as exc:
                raise ModelLoadError(f"{exc}; or train without the LPIPS term: lpips=0 (--lpips 0)") from None
        self.solver = ds.get_solver(options.teacher or SEED_TEACHER, **parse_pairs_text(options.teacher_options or ""))
        self.optimizer = torch.optim.Adam(net.parameters(), lr=options.lr, betas=(0.9, 0.999), eps=1e-8)
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.elapsed_s = 0.0

    # -- grids, data ----------------------------------------------------------------------------
    def grid(self, n: int) -> tuple[list[float], torch.Tensor]:
        """The student's ``n`` sigmas and the teacher's ``(M + 1)(n - 1) + 1`` (float64, host)."""
        if n not in self._grids:
            smin, smax, m = self.sigma_min, self.sigma_max, self.options.M
            self._grids[n] = (
                self._schedule.sigmas(n, smin, smax).tolist(),
                self._schedule.sigmas((m + 1) * (n - 1) + 1, smin, smax),
            )
        return self._grids[n]

    def _check_student_teacher(self, teacher: EDMDenoiser, count: int) -> None:
        """A student teacher (second stage) must have been trained on exactly the teacher grid."""
        if not isinstance(teacher, SFDStudent):
            return
        _, grid = self._grids[next(n for n in self._grids if len(self._grids[n][1]) == count)]
        trained = teacher.sigma_table.get(count)
        if trained is None:
            counts = ", ".join(str(k) for k in sorted(teacher.sigma_table))
            raise OptionError(
                f"the teacher is an SFD student trained on {counts} sigmas; the teacher grid here has "
                f"{count} ((M + 1) * (num_steps - 1) + 1): pick M and num_steps to match"
            )
        if not _same(trained, grid.tolist()):
            raise OptionError(_grid_mismatch(teacher, trained, grid.tolist()))

    def steps_at(self, iteration: int) -> int:
        """The student's number of sigmas in ``iteration`` (SFD-v: drawn from ``(seed, iteration)``)."""
        o = self.options
        if not o.step_condition:
            return o.num_steps
        return int(np.random.default_rng([o.seed, iteration, 7]).integers(o.min_steps, o.max_steps + 1))

    def labels(self, iteration: int) -> torch.Tensor | None:
        """This process's class indices for iteration ``iteration`` (``None``: no labels), each from
        its trajectory's seed as ``sample --labels`` draws them (``random``: ``default_rng([seed, 1])``)."""
        if self._label_fn is None:
            return None
        o = self.options
        seeds = shard(range(o.seed + iteration * o.batch, o.seed + (iteration + 1) * o.batch))
        labels: torch.Tensor = self._label_fn(list(seeds))
        return labels

    def _teacher_for(self, count: int) -> EDMDenoiser:
        if isinstance(self.teacher, SFDStudent) and self.teacher.step_condition is not None:
            return self.teacher.with_steps(count)
        return self.teacher

    # -- one iteration -----------------------------------------------------------------------
    @property
    def iterations(self) -> int:
        return self.options.iterations

    def lr_at(self, iteration: int) -> float:
        """The seed's schedule: ``lr / 10`` from the iteration after the first one that starts with
        ``lr_drop`` of the trajectories seen (the seed checks its count at the end of an iteration,
        before adding that iteration's batch), ``lr`` before."""
        o = self.options
        if iteration == 0:
            return o.lr
        seen_before_previous = (iteration - 1) * o.batch
        return o.lr / 10 if seen_before_previous >= o.lr_drop * o.total_kimg * 1000 else o.lr

    def noise(self, iteration: int) -> torch.Tensor:
        """This process's share of iteration ``iteration``'s noise, times ``sigma_max``."""
        o = self.options
        seeds = shard(range(o.seed + iteration * o.batch, o.seed + (iteration + 1) * o.batch))
        return ds.seed_noise(seeds, self.teacher.shape, device=self.device) * self.sigmas[0]

    def teacher_targets(
        self, x: torch.Tensor, *, num_steps: int | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The teacher trajectory at the student's time points 1..N-1: ``[N - 1, batch, ...]``."""
        _, grid = self.grid(num_steps or self.options.num_steps)
        with torch.no_grad():
            run = self.solver.sample(
                self._teacher_for(len(grid)), x, grid, cond=labels, afs=bool(self.options.teacher_afs),
                return_trajectory=True,
            )
        assert run.trajectory is not None
        return run.trajectory[self.options.M + 1 :: self.options.M + 1]

    def evaluate(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        num_steps: int | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """The per-step losses of the current student on noise ``x`` (no update): Euler steps
        from its own previous outputs, each compared with the teacher (mean |error| per element)."""
        n = num_steps or self.options.num_steps
        targets = self.teacher_targets(x, num_steps=n, labels=labels) if targets is None else targets
        cur = x
        out: dict[str, float] = {}
        with torch.no_grad():
            for i in range(n - 1):
                cur = self.student_step(cur, i, num_steps=n, labels=labels)
                out[f"loss{i}"] = float((cur - targets[i]).abs().mean())
        out["loss"] = sum(out.values()) / len(out)
        return out

    def student_step(
        self, x: torch.Tensor, i: int, *, num_steps: int | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One Euler step of the student from ``sigmas[i]`` to ``sigmas[i + 1]`` (AFS on step 0)."""
        n = num_steps or self.options.num_steps
        sigmas, _ = self.grid(n)
        s0, s1 = sigmas[i], sigmas[i + 1]
        if self.options.afs and i == 0:
            return x + (s1 - s0) * x / math.sqrt(1 + s0 * s0)
        self.student.step_condition = n if self.conditioned else None
        denoised = self.student(x, torch.tensor(s0, device=self.device), labels)
        return x + (s1 - s0) * (x - denoised) / s0

    def step(self) -> dict[str, float]:
        """One training iteration (a batch of trajectories, ``N - 1`` updates); returns its losses."""
        o = self.options
        t0 = time.perf_counter()
        n = self.steps_at(self.iteration)
        x = self.noise(self.iteration)
        labels = self.labels(self.iteration)
        targets = self.teacher_targets(x, num_steps=n, labels=labels)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.iteration)
        params = [p for p in self.student.net.parameters() if p.requires_grad]
        cur = x
        losses: dict[str, float] = {}
        for i in range(n - 1):
            target = targets[i]
            if o.afs and i == 0:
                with torch.no_grad():
                    out = self.student_step(cur, i, num_steps=n, labels=labels)
                    l1 = (out - target).abs().sum() / o.batch
            else:
                self.optimizer.zero_grad(set_to_none=True)
                out = self.student_step(cur, i, num_steps=n, labels=labels)
                l1 = (out - target).abs().sum() / o.batch
                loss = l1
                if self._lpips is not None and i == n - 2:
                    # the seed adds the batch mean of LPIPS to every element's L1 error
                    perceptual = self._lpips(out, target).sum() / o.batch
                    loss = l1 + self.lpips_weight * math.prod(self.teacher.shape) * perceptual
                    losses["lpips"] = all_reduce_sum(perceptual.detach().reshape(1).clone()).item()
                loss.backward()
                for p in params:
                    if p.grad is not None:
                        all_reduce_sum(p.grad)
                        torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
                self.optimizer.step()
            value = all_reduce_sum(l1.detach().reshape(1).clone()).item()
            losses[f"loss{i}"] = value / (math.prod(self.teacher.shape))
            cur = out.detach()
        self._update_ema()
        self.iteration += 1
        per_step = [v for k, v in losses.items() if k.startswith("loss")]
        losses["loss"] = sum(per_step) / len(per_step)
        self.elapsed_s += time.perf_counter() - t0
        record = {"iteration": float(self.iteration), "steps": float(n), **losses}
        self.history.append(record)
        return record

    def _update_ema(self) -> None:
        if self.ema_net is None:
            return
        beta = 0.5 ** (self.options.batch / (self.options.ema * 1000))
        with torch.no_grad():
            for e, p in zip(self.ema_net.parameters(), self.student.net.parameters(), strict=True):
                e.lerp_(p.detach(), 1 - beta)

    def train(
        self,
        *,
        progress: Callable[[Mapping[str, float]], None] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 0,
        stop_after: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Run until the last iteration (or ``stop_after`` more), checkpointing every ``checkpoint_every``
        and at the end.

        ``stop()`` is asked before every iteration, where the state is consistent: when it is true
        (on any process, under torchrun) training ends there, and the checkpoint is still written,
        so an interrupted run loses nothing and resumes from that iteration.
        """
        end = self.iterations if stop_after is None else min(self.iterations, self.iteration + stop_after)
        while self.iteration < end:
            if stop is not None and self._any_rank(stop()):
                break
            record = self.step()
            if progress is not None:
                progress({**record, "iterations": float(self.iterations)})
            if checkpoint is not None and checkpoint_every and self.iteration % checkpoint_every == 0:
                self.save_checkpoint(checkpoint)
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process must stop at the same iteration)."""
        if not self.dist.active:
            return flag
        return all_reduce_sum(torch.tensor([float(flag)], device=self.device)).item() > 0

    # -- the result ----------------------------------------------------------------------------
    def result(self) -> SFDStudent:
        """The distilled student (the EMA weights when EMA is on)."""
        net = copy.deepcopy(self.ema_net if self.ema_net is not None else self.student.net)
        net = net.requires_grad_(False).eval()
        o = self.options
        return SFDStudent(
            net, sigmas=tuple(self.sigmas), afs=o.afs,
            sigma_table={n: tuple(self.grid(n)[0]) for n in o.step_counts},
            settings={**options_as_dict(o), "iterations_done": self.iteration, "train_seconds": self.elapsed_s},
            teacher=self.teacher_info, name="sfd-student",
            sigma_min=self.sigma_min, sigma_max=self.sigma_max,
        )

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, directory: str | os.PathLike[str]) -> None:
        """Write the resumable state into ``directory`` (rank 0 only): student (and EMA) weights as
        safetensors, Adam state and RNG states via ``torch.save`` (tensors and plain containers
        only, loadable with ``weights_only=True``), and ``state.json`` last."""
        if not self.dist.is_main:
            return
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensorfile.save_file({k: v.detach().cpu() for k, v in self.student.net.state_dict().items()}, d / "student.safetensors")
        if self.ema_net is not None:
            tensorfile.save_file({k: v.detach().cpu() for k, v in self.ema_net.state_dict().items()}, d / "ema.safetensors")
        extra: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            extra["cuda_rng"] = torch.cuda.get_rng_state_all()
        tmp = d / f".optimizer.pt.tmp-{os.getpid()}"
        torch.save(extra, tmp)
        os.replace(tmp, d / "optimizer.pt")
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": PAPER,
            "iteration": self.iteration,
            "iterations": self.iterations,
            "elapsed_s": self.elapsed_s,
            "options": options_as_dict(self.options),
            "teacher": self.teacher_info,
            "sigmas": self.sigmas,
            "history": self.history,
        }
        tmp = d / f".state.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, d / "state.json")

    def load_checkpoint(self, directory: str | os.PathLike[str]) -> None:
        """Continue from ``directory``: the options and the teacher must be the checkpoint's."""
        d = Path(directory)
        where = str(d)
        try:
            state = json.loads((d / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OptionError(f"cannot read the SFD checkpoint {where!r}: {exc}") from None
        if state.get("format") != CHECKPOINT_FORMAT:
            raise OptionError(f"{where!r} is not an SFD checkpoint (format {CHECKPOINT_FORMAT!r})")
        ours = options_as_dict(self.options)
        diff = [k for k, v in state.get("options", {}).items() if k not in _FREE_ON_RESUME and ours.get(k) != v]
        if diff:
            shown = ", ".join(f"{k}={state['options'][k]!r} (now {ours.get(k)!r})" for k in diff)
            raise OptionError(f"the SFD checkpoint {where!r} was trained with other options: {shown}")
        trained = state.get("sigmas")
        if trained is not None and not _same(self.sigmas, [float(v) for v in trained]):
            raise OptionError(
                f"the SFD checkpoint {where!r} was trained on sigmas {trained[-1]:g}..{trained[0]:g}, this run's are "
                f"{self.sigmas[-1]:g}..{self.sigmas[0]:g}: resume with sigma_min={trained[-1]:g}, "
                f"sigma_max={trained[0]:g} (--sigma-min, --sigma-max)"
            )
        if state.get("teacher", {}).get("fingerprint") != self.teacher_info["fingerprint"]:
            raise OptionError(f"the SFD checkpoint {where!r} was trained from another teacher network")
        from diffsampler.plugins.edm.checkpoint import load_state_dict_strict

        load_state_dict_strict(self.student.net, tensorfile.load_file(d / "student.safetensors"), source=where)
        if self.ema_net is not None:
            load_state_dict_strict(self.ema_net, tensorfile.load_file(d / "ema.safetensors"), source=where)
        extra = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
        if "cuda_rng" in extra and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        self.iteration = int(state["iteration"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.history = list(state.get("history", []))
