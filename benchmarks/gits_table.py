"""GITS vs the baseline schedules: error at NFE 4..10 for ipndm and dpmpp (docs/gits.md).

    python benchmarks/gits_table.py --model gmm      # exact: error to the exact ODE endpoint
    python benchmarks/gits_table.py --model digits   # neural: error to a fine teacher run

One search per model (num_warmup trajectories, teacher ipndm on 61 points, polynomial rho=7) gives
the cost matrix; the DP then yields the schedule of every NFE. Error: RMS over coordinates of
(sample - reference), averaged over the evaluation seeds (0..63, disjoint from the warm-up seeds).
Prints markdown tables and the cost of each phase.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import diffsampler as ds

ROWS = ["ipndm[max_order=4]@polynomial[rho=7]", "dpmpp[max_order=3]@logsnr"]


def parse_nfes(text):
    from diffsampler.compare import parse_nfes as parse

    return parse(text)


def parse_row(text):
    from diffsampler.compare import SolverSpec

    spec = SolverSpec.parse(text)
    return spec.solver, spec.options, (spec.schedule or "polynomial", spec.schedule_options)


def reference(model, name, noise, seeds):
    if name in ("gmm", "empirical"):
        from diffsampler.plugins.models.ground_truth import exact_endpoints

        return torch.from_numpy(exact_endpoints(model, seeds).endpoints).to(noise.dtype), "exact ODE endpoint (DOP853, rtol 1e-10)"
    solver = ds.get_solver("heun")
    sig = ds.get_schedule("polynomial").sigmas(201, model.sigma_min, model.sigma_max)
    x = solver.sample(model, noise * sig[0], sig).x
    return x, "heun, 200 steps (399 NFE), polynomial rho=7"


def lab_of(name, opts):
    return f"{name}[{','.join(f'{k}={v}' for k, v in opts.items())}]"


def err(x, ref):
    return float(((x.double() - ref.double()) ** 2).flatten(1).mean(1).sqrt().mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gmm")
    p.add_argument("--metric", default="dev")
    p.add_argument("--coeff", type=float, default=1.15)
    p.add_argument("--num-warmup", type=int, default=256)
    p.add_argument("--teacher-steps", type=int, default=61)
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", default=None)
    p.add_argument("--row", action="append", help="solver spec with its baseline schedule")
    p.add_argument("--afs", action="store_true", help="AFS for both; GITS searches its AFS step")
    p.add_argument("--nfes", default="4-10")
    p.add_argument("--labels", default="none",
                   help="class labels of the warm-up (none: as the docs' digits tables, which compare "
                        "unconditional samples; auto/random: as the seed)")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = ds.get_model(a.model)
    dtype = getattr(torch, a.dtype)
    seeds = list(range(a.seeds))
    noise = ds.seed_noise(seeds, model.shape, dtype=dtype)
    t0 = time.perf_counter()
    ref, ref_name = reference(model, a.model, noise, seeds)
    t_ref = time.perf_counter() - t0
    g = ds.get_distiller("gits", metric=a.metric, coeff=a.coeff, num_warmup=a.num_warmup,
                        teacher_steps=a.teacher_steps, dtype=a.dtype, labels=a.labels)
    result = g.search(model)
    rows, out = {}, {"model": a.model, "metric": a.metric, "coeff": a.coeff, "reference": ref_name,
                     "search_seconds": result.seconds, "reference_seconds": t_ref, "cells": []}
    dp_seconds = 0.0
    schedules = {}
    nfes = list(parse_nfes(a.nfes))
    for nfe in nfes:
        t = time.perf_counter()
        sched = g.schedule(result, num_steps=nfe + 1)
        dp_seconds += time.perf_counter() - t
        schedules[nfe] = sched.sigmas
    specs = [parse_row(r) for r in (a.row or ROWS)]
    for name, opts, (bname, bopts) in specs:
        solver = ds.get_solver(name, **{k: int(v) if str(v).isdigit() else v for k, v in opts.items()})
        base = ds.get_schedule(bname, **bopts)
        for nfe in nfes:
            n = ds.steps_for_nfe(solver, nfe, afs=a.afs)
            sig_b = base.sigmas(n, model.sigma_min, model.sigma_max, denoiser=model)
            if a.afs:  # the student's own AFS search on the same cost matrix
                ga = ds.get_distiller("gits", metric=a.metric, coeff=a.coeff, num_warmup=a.num_warmup,
                                     teacher_steps=a.teacher_steps, dtype=a.dtype, afs=True, labels=a.labels,
                                     solver=name, solver_options=",".join(f"{k}={v}" for k, v in opts.items()))
                schedules[nfe] = ga.schedule(result, teacher=model, num_steps=n - 1).sigmas
            sig_g = torch.tensor(schedules[nfe], dtype=torch.float64)
            eb = err(solver.sample(model, noise * sig_b[0], sig_b, afs=a.afs).x, ref)
            eg = err(solver.sample(model, noise * sig_g[0], sig_g, afs=a.afs).x, ref)
            rows.setdefault(lab_of(name, opts), []).append((nfe, eb, eg))
            out["cells"].append({"solver": lab_of(name, opts), "nfe": nfe, "baseline": eb, "gits": eg,
                                 "baseline_schedule": bname, "gits_sigmas": list(schedules[nfe])})
    out["dp_seconds_all_nfes"] = dp_seconds
    print(f"model {a.model}, metric {a.metric}, coeff {a.coeff}, reference: {ref_name}")
    print("| solver, schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |" + (" (AFS)" if a.afs else ""))
    print("|---" * (len(nfes) + 1) + "|")
    for name, opts, (bname, _) in specs:
        lab = f"{name}[{','.join(f'{k}={v}' for k, v in opts.items())}]"
        print(f"| {lab} @ {bname} | " + " | ".join(f"{eb:.4f}" for _, eb, _ in rows[lab]) + " |")
        print(f"| {lab} @ gits | " + " | ".join(
            f"**{eg:.4f}**" if eg < eb else f"{eg:.4f}" for _, eb, eg in rows[lab]) + " |")
    wins = sum(eg < eb for r in rows.values() for _, eb, eg in r)
    print(f"GITS better in {wins}/{sum(len(r) for r in rows.values())} cells")
    s = result.seconds
    print(f"search: teacher trajectories {s['teacher']:.2f} s ({result.num_warmup} x {result.teacher_nfe} NFE), "
          f"cost matrix {s['cost']:.2f} s, DP for {len(nfes)} NFEs {dp_seconds * 1e3:.1f} ms; reference {t_ref:.1f} s")
    for nfe, sig in schedules.items():
        print(f"  NFE {nfe}: " + ", ".join(f"{v:.4g}" for v in sig))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
