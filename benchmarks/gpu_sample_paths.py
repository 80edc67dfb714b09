"""GPU check of ``diffsampler sample``'s fast paths (issue 11): the run with ``--cuda-graph``,
with ``--precision fp16 --channels-last --cudnn-benchmark``, and with random class labels as the
graph's static input, each against the same run in eager float32, through ``plan_run`` and
``execute`` (the pinned-copy writer included) exactly as the command runs them.

    python benchmarks/gpu_sample_paths.py [--model digits] [--seeds 1024] [--batch 256] [--device cuda]

Prints one JSON line per check: finite, max |deviation| from the eager run, seconds (with the
eager seconds beside). A check that cannot run (e.g. a CUDA graph on the CPU) prints its error.
Runs from a source checkout without installation (plugins registered directly).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from gpu_vs_seed import registry

CHECKS: list[dict[str, Any]] = [
    {"cuda_graph": True},
    {"cuda_graph": True, "cudnn_benchmark": True, "model_options": {"precision": "fp16", "channels_last": True}},
    {"cuda_graph": True, "labels": "random"},
]


def sample(args: argparse.Namespace, **options: Any) -> tuple[torch.Tensor, float]:
    from diffsampler.runs import RunConfig, execute, plan_run

    config = RunConfig(model=args.model, solver="ipndm", nfe=5, seeds=tuple(range(args.seeds)), batch=args.batch,
                       device=args.device, **options)
    plan = plan_run(config)
    done: dict[int, torch.Tensor] = {}
    start = time.perf_counter()
    execute(plan, on_batch=lambda batch, x: done.update({batch.index: x.clone()}))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return torch.cat([done[i] for i in sorted(done)]), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--seeds", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    registry()
    eager: dict[str | None, tuple[torch.Tensor, float]] = {}
    for options in CHECKS:
        labels = options.get("labels")
        try:
            if labels not in eager:
                eager[labels] = sample(args, **({"labels": labels} if labels else {}))
            reference, eager_s = eager[labels]
            x, seconds = sample(args, **options)
            row = {"finite": bool(torch.isfinite(x).all()), "max_abs_dev_vs_eager": float((x - reference).abs().max()),
                   "seconds": round(seconds, 3), "eager_seconds": round(eager_s, 3)}
        except Exception as exc:  # report and go on with the next check
            row = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"check": "sample", "options": options, **row}), flush=True)


if __name__ == "__main__":
    main()
