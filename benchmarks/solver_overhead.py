"""Each solver's own cost per step, with the denoiser's time taken out (target: < 1 ms/step).

    python benchmarks/solver_overhead.py [--batch 128] [--steps 20] [--repeat 5] [--threads 1]
                                         [--device cpu] [--json]

A batch of ``batch x 3 x 32 x 32`` float32 samples on the CPU, a cheap denoiser
(``D(x; sigma) = x / (1 + sigma^2)``, a few elementwise operations). The denoiser alone is timed
on the same input; the overhead of a solver is ``(wall time of the run - NFE x denoiser time)
/ steps``: its update arithmetic, ``prepare()`` (host-side coefficients) and the shared run
mechanics. Every run is timed twice: as shipped, and with the core's deferred finiteness check
of every evaluation (``isfinite(out).all()``, no host sync) switched off ("solver own").
Not a test: timings depend on the machine and its load; medians of ``--repeat`` round-robin
runs are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

import diffsampler as ds
import diffsampler.solver as solver_module

CASES: list[tuple[str, dict[str, Any]]] = [
    ("euler", {}),
    ("heun", {}),
    ("dpm", {}),
    ("dpmpp", {}),
    ("dpmpp", {"thresholding": "dynamic"}),
    ("unipc", {}),
    ("unipc", {"thresholding": "dynamic"}),
    ("deis", {}),
    ("deis", {"deis_mode": "rhoab"}),
    ("ipndm", {}),
    ("ipndm_v", {}),
]


class CheapDenoiser:
    """``D(x; sigma) = x / (1 + sigma^2)``: the exact denoiser of N(0, I) data, nearly free."""

    shape = (3, 32, 32)
    sigma_min = 0.002
    sigma_max = 80.0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return x / (1.0 + sigma * sigma).reshape(-1, 1, 1, 1)


@contextlib.contextmanager
def finiteness_check(enabled: bool) -> Iterator[None]:
    """Runs with the core's per-evaluation finiteness check on or off (``Run(check_finite=)``)."""
    original = solver_module.Run

    class Unchecked(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["check_finite"] = False
            super().__init__(*args, **kwargs)

    solver_module.Run = original if enabled else Unchecked  # type: ignore[misc]
    try:
        yield
    finally:
        solver_module.Run = original  # type: ignore[misc]


def timed(fn: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(batch: int, steps: int, repeat: int, device: torch.device) -> dict[str, Any]:
    model = CheapDenoiser()
    g = torch.Generator().manual_seed(0)
    sigmas = ds.get_schedule("polynomial").sigmas(steps + 1, 0.002, 80.0)
    x = (torch.randn(batch, *model.shape, generator=g) * float(sigmas[0])).to(device)
    sigma_batch = torch.full((batch,), 1.5, device=device)
    calls = 20
    solvers = [(name, options, ds.get_solver(name, **options)) for name, options in CASES]

    def denoiser_alone() -> None:
        for _ in range(calls):
            model(x, sigma_batch)


    # Round-robin repeats, so that a burst of load on a shared machine hits every row alike.
    denoiser_times: list[float] = []
    run_times: dict[bool, list[list[float]]] = {True: [[] for _ in solvers],
                                                False: [[] for _ in solvers]}
    for r in range(repeat + 1):
        t = timed(denoiser_alone, device) / calls
        if r:
            denoiser_times.append(t)
        for check in (True, False):
            with finiteness_check(check):
                for k, (_, _, solver) in enumerate(solvers):
                    t = timed(lambda s=solver: s.sample(model, x, sigmas), device)
                    if r:  # the first round warms up the allocator and lazy imports
                        run_times[check][k].append(t)
    per_eval = statistics.median(denoiser_times)
    rows = []
    for k, (name, options, solver) in enumerate(solvers):
        nfe = solver.nfe(steps + 1)
        wall = statistics.median(run_times[True][k])
        wall_unchecked = statistics.median(run_times[False][k])
        label = name + (" " + " ".join(f"{k}={v}" for k, v in options.items()) if options else "")
        rows.append({"solver": label, "nfe": nfe, "wall_ms": wall * 1e3,
                     "overhead_ms_per_step": (wall - nfe * per_eval) / steps * 1e3,
                     "solver_ms_per_step": (wall_unchecked - nfe * per_eval) / steps * 1e3})
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} intra-op threads")
    return {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
                   f"timed on {where}",
        "batch": f"{batch} x 3 x 32 x 32 float32", "steps": steps,
        "denoiser_ms_per_eval": per_eval * 1e3, "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: stable timings on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cpu (the target), or e.g. cuda")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    report = measure(opts.batch, opts.steps, opts.repeat, torch.device(opts.device))
    if opts.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}")
    print(f"batch {report['batch']}, {report['steps']} steps, denoiser "
          f"{report['denoiser_ms_per_eval']:.3f} ms per evaluation")
    print(f"{'solver':34s} {'NFE':>4s} {'wall ms':>8s} {'overhead':>9s} {'solver own':>11s}"
          "   (ms per step; own = without the core's finiteness check)")
    for row in report["results"]:
        flag = "" if row["solver_ms_per_step"] < 1.0 else "  over 1 ms"
        print(f"{row['solver']:34s} {row['nfe']:4d} {row['wall_ms']:8.2f} "
              f"{row['overhead_ms_per_step']:9.3f} {row['solver_ms_per_step']:11.3f}{flag}")


if __name__ == "__main__":
    main()
