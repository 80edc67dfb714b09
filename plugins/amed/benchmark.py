"""Measure AMED on a model: error against a fine teacher run at small NFE, with and without AMED.

``python -m diffsampler.plugins.amed.benchmark --out results.json`` trains one predictor per
(student, NFE) with the seed's ``launch.sh`` settings (CIFAR-10 rows) and compares the final
samples of every solver with a 100-step Heun run (200 NFE) from the same noise. Error: the mean
over samples of the per-pixel RMS difference. Runs on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import diffsampler as ds

#: The seed's launch.sh rows (CIFAR-10) per student; dpmpp uses logsnr here (the seed's LDM row
#: uses the discrete schedule, which digits has no time variable for).
RECIPES: dict[str, dict[str, Any]] = {
    "amed": dict(teacher="heun", m=1, schedule="time_uniform", rho=1.0, scale_dir=0.01, scale_time=0.0),
    "euler": dict(teacher="heun", m=1, schedule="polynomial", rho=7.0, scale_dir=0.01, scale_time=0.0),
    "ipndm": dict(teacher="ipndm", m=2, schedule="polynomial", rho=7.0, scale_dir=0.01, scale_time=0.2,
                  max_order=4),
    "dpmpp": dict(teacher="dpmpp", m=2, schedule="logsnr", rho=7.0, scale_dir=0.01, scale_time=0.0,
                  max_order=3, predict_x0=False),
}
BASELINES: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "euler": ({}, "polynomial", {"rho": 7.0}),
    "ipndm": ({"max_order": 4}, "polynomial", {"rho": 7.0}),
    "dpmpp": ({"max_order": 3}, "logsnr", {}),
}


def rms_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).flatten(1).square().mean(dim=1).sqrt().mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="amed-results.json")
    p.add_argument("--model", default="digits")
    p.add_argument("--seeds", type=int, default=256)
    p.add_argument("--nfes", default="3,5,7,9")
    p.add_argument("--students", default="amed,euler,ipndm,dpmpp")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--total-kimg", type=float, default=1.0)
    p.add_argument("--dir", default="/tmp/amed-bench")
    p.add_argument("--set", action="append", default=[],
                   help="override a recipe setting for every student, e.g. --set teacher=ipndm --set m=3")
    p.add_argument("--no-baselines", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = ds.get_model(a.model)
    nfes = [int(v) for v in a.nfes.split(",")]
    noise = ds.seed_noise(range(a.seeds), model.shape) * model.sigma_max
    fine = ds.get_schedule("polynomial", rho=7.0).sigmas(101, model.sigma_min, model.sigma_max, model)
    ref = ds.get_solver("heun").sample(model, noise, fine).x
    rows: list[dict[str, Any]] = []

    def record(**row: Any) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    override = {k: _value(v) for k, _, v in (item.partition("=") for item in a.set)}
    for name, (opts, sched, sopts) in ({} if a.no_baselines else BASELINES).items():
        solver = ds.get_solver(name, **opts)
        for nfe in nfes:
            for afs in (False, True):
                n = ds.steps_for_nfe(solver, nfe, afs=afs)
                sig = ds.get_schedule(sched, **sopts).sigmas(n, model.sigma_min, model.sigma_max, model)
                res = solver.sample(model, noise, sig, afs=afs)
                record(solver=name, amed=False, nfe=res.nfe, afs=afs, error=rms_error(res.x, ref))
    for student in a.students.split(","):
        for nfe in nfes:
            num_steps = (nfe + 3) // 2  # 2 NFE per step, AFS saves one
            recipe = {**RECIPES[student], **override}
            # the errors are measured on unconditional samples: train without labels too
            # (--set labels=random trains as the seed)
            d = ds.get_distiller("amed", solver=student, num_steps=num_steps, batch=a.batch,
                                 total_kimg=a.total_kimg, afs=True, **{"labels": "none", **recipe})
            t0 = time.perf_counter()
            pred = d.distill(model, model_name=a.model)
            seconds = time.perf_counter() - t0
            path = f"{a.dir}/{student}-nfe{nfe}.safetensors"
            pred.save(path)
            name = "amed" if student == "amed" else f"amed-{student}"
            solver = ds.get_solver(name, predictor=path)
            res = solver.sample(model, noise, pred.settings["sigmas"], afs=True)
            with torch.no_grad():
                r = [float(v) for v in _r_per_step(pred, model, noise[:64])]
            record(solver=name, amed=True, nfe=res.nfe, afs=True, error=rms_error(res.x, ref),
                   train_seconds=round(seconds, 2), iterations=pred.settings["iterations"], r_mean=r,
                   recipe=recipe)
    with open(a.out, "w") as f:
        json.dump({"model": a.model, "seeds": a.seeds, "reference": "heun, 101 sigmas polynomial rho 7",
                   "rows": rows}, f, indent=1)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _r_per_step(pred: Any, model: Any, noise: torch.Tensor) -> list[float]:
    """Mean predicted ``r`` per step along a sampling run (the predictor's learned midpoints)."""
    seen: list[float] = []
    orig = pred.forward

    def spy(*args: Any, **kw: Any) -> Any:
        out = orig(*args, **kw)
        seen.append(float(out[0].mean()))
        return out

    pred.forward = spy
    try:
        name = "amed" if pred.student == "amed" else f"amed-{pred.student}"
        solver = ds.get_solver(name)
        solver.predictor = pred
        solver.sample(model, noise, pred.settings["sigmas"], afs=True)
    finally:
        del pred.forward
    return seen


if __name__ == "__main__":
    main()
