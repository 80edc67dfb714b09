"""SFD on ``digits``: distil Euler students at NFE 2, 3, 4 and compare them with every solver.

Error = RMSE (over all pixels of 256 samples, seeds 0-255) to a fine teacher run (heun, 129
polynomial rho-7 sigmas, 255 NFE). Each training-free solver is tried at the same NFE with its
recommended schedule and with polynomial rho 7, with and without AFS; the best of those is its
row. Run: ``python benchmarks/sfd_digits.py --out sfd_digits.json`` (CPU, one thread).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import diffsampler as ds

SOLVERS = ("euler", "heun", "dpm", "dpmpp", "unipc", "deis", "ipndm", "ipndm_v")


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def baselines(model: object, x: torch.Tensor, ref: torch.Tensor, nfe: int) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name in SOLVERS:
        solver = ds.get_solver(name)
        rec_name, rec_opts = solver.recommended_schedule
        best: dict[str, object] | None = None
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
                err = rmse(run.x, ref)
                if best is None or err < best["rmse"]:  # type: ignore[operator]
                    best = {"rmse": err, "schedule": sched_name, "afs": afs, "steps": steps}
        if best is not None:
            out[name] = best
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nfe", default="2,3,4")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--kimg", type=float, default=12.8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", type=int, default=256)
    p.add_argument("--out", default="sfd_digits.json")
    p.add_argument("--save-students", default="")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = ds.get_model("digits")
    x = ds.seed_noise(range(a.seeds), model.shape)
    ref_sigmas = ds.get_schedule("polynomial", rho=7.0).sigmas(129, model.sigma_min, model.sigma_max)
    with torch.no_grad():
        ref = ds.get_solver("heun").sample(model, x * ref_sigmas[0], ref_sigmas).x
    results: dict[str, object] = {"reference": "heun, 129 polynomial rho-7 sigmas (255 NFE)", "seeds": a.seeds,
                                  "lr": a.lr, "kimg": a.kimg, "batch": a.batch, "threads": 1, "rows": {}}
    for nfe in (int(v) for v in a.nfe.split(",")):
        distiller = ds.get_distiller("sfd", num_steps=nfe + 2, afs=True, lr=a.lr, total_kimg=a.kimg, batch=a.batch)
        trainer = distiller.trainer(model)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        student = trainer.result()
        sig = torch.tensor(student.sigmas, dtype=torch.float64)
        euler = ds.get_solver("euler")
        with torch.no_grad():
            run = euler.sample(student, x * sig[0], sig, afs=True)
            base = euler.sample(model, x * sig[0], sig, afs=True)
            target = trainer.teacher_targets(x * sig[0])[-1]
        assert run.nfe == nfe
        if a.save_students:
            student.save(f"{a.save_students}-nfe{nfe}.json")
        row = {"sfd": {"rmse": rmse(run.x, ref), "train_seconds": seconds, "iterations": trainer.iteration,
                       "first_loss": trainer.history[0]["loss"], "last_loss": trainer.history[-1]["loss"]},
               "teacher_euler_same_sigmas": rmse(base.x, ref),
               "teacher_target": {"rmse": rmse(target, ref), "nfe": trainer.solver.nfe(len(trainer.teacher_sigmas))},
               "solvers": baselines(model, x, ref, nfe)}
        results["rows"][str(nfe)] = row  # type: ignore[index]
        print(nfe, json.dumps(row), flush=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
