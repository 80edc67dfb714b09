"""SFD training throughput: teacher trajectories per second for EDM's CIFAR-10 network
(VP, DDPM++ SongUNet, ~56M parameters) with random weights, at the seed's settings
(batch 128, NFE 2 student = 4 sigmas with AFS, M = 3, teacher dpmpp order 3: 12 teacher NFE
and 2 student forward + backward passes per iteration).

    python benchmarks/sfd_throughput.py [--batch 128] [--repeat 1] [--warmup 0] [--device cpu|cuda]
        [--steps 4] [--threads N] [--json]

Prints the median over ``--repeat`` iterations, split into the teacher run and the student
updates. Slow on a CPU (minutes per iteration at batch 128): keep ``--repeat`` tiny. Never a
timed assert: this only prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from edm_forward import CIFAR10_DDPMPP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4, help="student sigmas (4 with AFS = 2 NFE)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()

    import torch

    import diffsampler as ds
    from diffsampler.plugins.edm.denoiser import EDMDenoiser
    from diffsampler.plugins.edm.precond import VPPrecond

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    device = torch.device(opts.device)
    teacher = EDMDenoiser(VPPrecond(**CIFAR10_DDPMPP), device=device)
    iterations = opts.warmup + opts.repeat
    trainer = ds.get_distiller(
        "sfd", batch=opts.batch, num_steps=opts.steps, total_kimg=iterations * opts.batch / 1000, device=opts.device
    ).trainer(teacher)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # split one iteration into its teacher run and its student updates (the trainer's own step)
    teacher_targets = trainer.teacher_targets
    spent: dict[str, float] = {}

    def timed_targets(x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        sync()
        t0 = time.perf_counter()
        out = teacher_targets(x, **kwargs)
        sync()
        spent["teacher"] = time.perf_counter() - t0
        return out

    trainer.teacher_targets = timed_targets  # type: ignore[method-assign]
    totals, teachers = [], []
    for i in range(iterations):
        sync()
        t0 = time.perf_counter()
        trainer.step()
        sync()
        if i >= opts.warmup:
            totals.append(time.perf_counter() - t0)
            teachers.append(spent["teacher"])
    total, teach = statistics.median(totals), statistics.median(teachers)
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    row = {
        "network": "EDM CIFAR-10 VP DDPM++ (SongUNet), random weights",
        "parameters": sum(p.numel() for p in teacher.net.parameters()),
        "batch": opts.batch,
        "student_nfe": opts.steps - 2,
        "teacher_nfe": trainer.solver.nfe(len(trainer.teacher_sigmas)),
        "device": where,
        "repeat": opts.repeat,
        "seconds_per_iteration": total,
        "teacher_seconds": teach,
        "student_seconds": total - teach,
        "trajectories_per_second": opts.batch / total,
    }
    if opts.json:
        print(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")


if __name__ == "__main__":
    main()
