"""SFD on ``digits``: students at NFE 2-4 (one per NFE), one SFD-v student for NFE 2-5, and a
second-stage 1-NFE student, against every training-free solver at the same NFE.

Two numbers per cell, on ``--seeds`` samples (seeds 0.., never seen in training; unconditional):
- RMSE over all pixels to a fine teacher run (heun, 129 polynomial rho-7 sigmas, 255 NFE);
- FD: the Frechet distance between the Gaussian fits of the samples and of the 1,797 real
  scikit-learn digits in pixel space (64 dimensions; the distribution metric FID computes in
  Inception space, which needs weights this machine cannot download). The fine teacher's own FD
  is the floor.
Each solver is tried with its recommended schedule and with polynomial rho 7, with and without
AFS; its row is the setting with the lowest RMSE. Run (CPU, one thread):

    python benchmarks/sfd_digits.py --out sfd_digits.json [--parts single,variable,stage2]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

import diffsampler as ds
from diffsampler.plugins.metrics.analytic import frechet_to_moments
from diffsampler.plugins.models.empirical import load_digits_data

SOLVERS = ("euler", "heun", "dpm", "dpmpp", "unipc", "deis", "ipndm", "ipndm_v")


class Scorer:
    def __init__(self, ref: torch.Tensor) -> None:
        self.ref = ref.double()
        data = load_digits_data().reshape(1797, -1)
        self.mean, self.cov = data.mean(0), np.cov(data, rowvar=False)

    def __call__(self, x: torch.Tensor) -> dict[str, float]:
        flat = x.double().reshape(x.shape[0], -1).numpy()
        return {"rmse": float(((x.double() - self.ref) ** 2).mean().sqrt()),
                "fd": frechet_to_moments(flat, self.mean, self.cov)}


def baselines(model: Any, x: torch.Tensor, score: Scorer, nfe: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in SOLVERS:
        solver = ds.get_solver(name)
        rec_name, rec_opts = solver.recommended_schedule
        best: dict[str, Any] | None = None
        for sched_name, sched_opts in ((rec_name, rec_opts), ("polynomial", {"rho": 7.0})):
            for afs in (False, True):
                try:
                    steps = ds.steps_for_nfe(solver, nfe, afs=afs)
                    sigmas = ds.get_schedule(sched_name, **sched_opts).sigmas(steps, model.sigma_min, model.sigma_max, model)
                    with torch.no_grad():
                        run = solver.sample(model, x * sigmas[0], sigmas, afs=afs)
                except Exception:  # unreachable NFE for this solver/AFS
                    continue
                if run.nfe != nfe:
                    continue
                s = score(run.x)
                if best is None or s["rmse"] < best["rmse"]:
                    best = {**s, "schedule": sched_name, "afs": afs, "steps": steps}
        if best is not None:
            out[name] = best
    return out


def evaluate(student: Any, x: torch.Tensor, score: Scorer) -> dict[str, float]:
    sig = torch.tensor(student.sigmas, dtype=torch.float64)
    with torch.no_grad():
        run = ds.get_solver("euler").sample(student, x * sig[0], sig, afs=student.afs)
    assert run.nfe == student.nfe
    return score(run.x)


def train(model: Any, name: str, **options: Any) -> tuple[Any, float, Any]:
    trainer = ds.get_distiller("sfd", **options).trainer(model)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    print(f"{name}: {trainer.iteration} iterations in {seconds:.0f} s, loss {trainer.history[0]['loss']:.4f} -> "
          f"{trainer.history[-1]['loss']:.4f}", flush=True)
    return trainer.result(), seconds, trainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parts", default="single,variable,stage2")
    p.add_argument("--nfe", default="2,3,4")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--kimg", type=float, default=12.8, help="per single-NFE student and for stage 1")
    p.add_argument("--v-kimg", type=float, default=51.2, help="SFD-v (the seed trains it 4x longer)")
    p.add_argument("--stage2-kimg", type=float, default=12.8)
    p.add_argument("--stage2-lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", type=int, default=1024)
    p.add_argument("--out", default="sfd_digits.json")
    p.add_argument("--save-students", default="")
    a = p.parse_args()
    torch.set_num_threads(1)
    parts = set(a.parts.split(","))
    model = ds.get_model("digits")
    x = ds.seed_noise(range(a.seeds), model.shape)
    ref_sigmas = ds.get_schedule("polynomial", rho=7.0).sigmas(129, model.sigma_min, model.sigma_max)
    with torch.no_grad():
        ref = ds.get_solver("heun").sample(model, x * ref_sigmas[0], ref_sigmas).x
    score = Scorer(ref)
    common = dict(lr=a.lr, batch=a.batch, labels="none")
    results: dict[str, Any] = {
        "reference": "heun, 129 polynomial rho-7 sigmas (255 NFE)", "seeds": a.seeds, "threads": 1,
        "reference_fd": score(ref)["fd"], "settings": {**common, "kimg": a.kimg, "v_kimg": a.v_kimg,
                                                       "stage2_kimg": a.stage2_kimg, "stage2_lr": a.stage2_lr},
        "solvers": {}, "single": {}, "variable": {}, "stage2": {},
    }
    nfes = [int(v) for v in a.nfe.split(",")]
    wanted = set(nfes) | ({2, 3, 4, 5} if "variable" in parts else set()) | ({1} if "stage2" in parts else set())
    for nfe in sorted(wanted):
        results["solvers"][str(nfe)] = baselines(model, x, score, nfe)
        print("solvers", nfe, json.dumps(results["solvers"][str(nfe)]), flush=True)

    def save(student: Any, tag: str) -> None:
        if a.save_students:
            student.save(f"{a.save_students}-{tag}.json")

    if "single" in parts:
        for nfe in nfes:
            student, seconds, trainer = train(model, f"nfe{nfe}", num_steps=nfe + 2, total_kimg=a.kimg, **common)
            sig = torch.tensor(student.sigmas, dtype=torch.float64)
            with torch.no_grad():
                base = ds.get_solver("euler").sample(model, x * sig[0], sig, afs=True)
                target = trainer.teacher_targets(x * sig[0])[-1]
            results["single"][str(nfe)] = {
                **evaluate(student, x, score), "train_seconds": seconds, "iterations": trainer.iteration,
                "teacher_euler_same_sigmas": score(base.x),
                "teacher_target": {**score(target), "nfe": trainer.solver.nfe(len(trainer.teacher_sigmas))},
            }
            save(student, f"nfe{nfe}")
            print("single", nfe, json.dumps(results["single"][str(nfe)]), flush=True)
    if "variable" in parts:
        student, seconds, trainer = train(model, "sfd-v", step_condition=True, min_steps=4, max_steps=7, num_steps=4,
                                          total_kimg=a.v_kimg, **common)
        drawn = [int(h["steps"]) for h in trainer.history]
        results["variable"] = {"train_seconds": seconds, "iterations": trainer.iteration,
                               "draws": {str(n): drawn.count(n) for n in range(4, 8)}}
        for n in range(4, 8):
            results["variable"][str(n - 2)] = evaluate(student.with_steps(n), x, score)
        save(student, "v")
        print("variable", json.dumps(results["variable"]), flush=True)
    if "stage2" in parts:
        stage1, s1, _ = train(model, "stage1", num_steps=7, total_kimg=a.kimg, **common)
        stage2, s2, _ = train(stage1, "stage2", num_steps=3, M=2, teacher="euler", teacher_options="",
                              teacher_afs=True, total_kimg=a.stage2_kimg, lpips=0, **{**common, "lr": a.stage2_lr})
        results["stage2"] = {"stage1": {**evaluate(stage1, x, score), "train_seconds": s1},
                             "1": {**evaluate(stage2, x, score), "train_seconds": s2}, "lpips": 0}
        save(stage2, "stage2")
        print("stage2", json.dumps(results["stage2"]), flush=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
