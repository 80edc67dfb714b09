"""Speed of the quality metrics: FID feature extraction (Inception-v3 at 299x299), the 2048-d
Frechet distance, and PRDC's chunked nearest-neighbour distances. Random weights and features
(timing only; such numbers mean nothing as quality).

    python benchmarks/metrics_speed.py [--batch 250] [--repeat 2] [--device cpu|cuda]
        [--size 32] [--prdc-n 10000] [--dim 2048] [--chunk 4096] [--threads N] [--skip ...] [--json]

Feature extraction: median seconds per batch of uint8 ``size x size`` images (resize included),
reported as images/s. PRDC: one ``n x n`` evaluation (two k-NN radius passes and the cross pass).
Never a timed assert: this only prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any


def _where(torch: Any, device: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def bench_features(torch: Any, device: Any, opts: argparse.Namespace) -> dict[str, Any]:
    from diffsampler.plugins.metrics.inception import FIDInceptionV3, randomize_

    net = randomize_(FIDInceptionV3()).eval().to(device)
    images = torch.randint(0, 256, (opts.batch, opts.size, opts.size, 3), dtype=torch.uint8, device=device)
    times = []
    with torch.inference_mode():
        for i in range(opts.warmup + opts.repeat):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= opts.warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"what": "fid-features", "batch": opts.batch, "size": opts.size, "median_s": median,
            "min_s": min(times), "images_per_s": opts.batch / median, "repeat": opts.repeat}


def bench_frechet(opts: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from diffsampler.plugins.metrics.fid import frechet_distance

    rng = np.random.default_rng(0)
    stats = []
    for _ in range(2):  # full-rank covariances, as from 50k samples
        a = rng.standard_normal((opts.dim, opts.dim)) / opts.dim ** 0.5
        stats.append((rng.standard_normal(opts.dim), a @ a.T + 1e-3 * np.eye(opts.dim)))
    start = time.perf_counter()
    frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1])
    return {"what": "frechet-distance", "dim": opts.dim, "seconds": time.perf_counter() - start}


def bench_prdc(torch: Any, device: Any, opts: argparse.Namespace) -> dict[str, Any]:
    from diffsampler.plugins.metrics.prdc import prdc

    gen = torch.Generator().manual_seed(0)
    real = torch.randn((opts.prdc_n, opts.dim), generator=gen)
    fake = torch.randn((opts.prdc_n, opts.dim), generator=gen) + 0.1
    out = {}
    for dtype in opts.prdc_dtypes.split(","):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        prdc(real, fake, k=5, chunk=opts.chunk, dtype=dtype, device=str(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[dtype] = time.perf_counter() - start
    return {"what": "prdc", "n": opts.prdc_n, "dim": opts.dim, "chunk": opts.chunk, "seconds": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--size", type=int, default=32, help="input image size (resized to 299)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--prdc-n", type=int, default=10_000)
    parser.add_argument("--prdc-dtypes", default="float64,float32")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--skip", default="", help="comma list of: features, frechet, prdc")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()

    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    skip = set(filter(None, opts.skip.split(",")))
    rows = []
    if "features" not in skip:
        rows.append(bench_features(torch, device, opts))
    if "frechet" not in skip:
        rows.append(bench_frechet(opts))
    if "prdc" not in skip:
        rows.append(bench_prdc(torch, device, opts))
    where = _where(torch, device)
    if opts.json:
        print(json.dumps({"device": where, "torch": torch.__version__, "rows": rows}, indent=2))
        return
    print(f"{where}; torch {torch.__version__}")
    for row in rows:
        if row["what"] == "fid-features":
            print(f"FID features, batch {row['batch']} of {row['size']}x{row['size']} -> 299: "
                  f"median {row['median_s']:.2f} s/batch ({row['repeat']} runs), {row['images_per_s']:.1f} images/s")
        elif row["what"] == "frechet-distance":
            print(f"Frechet distance, {row['dim']}-d (scipy sqrtm, float64): {row['seconds']:.2f} s")
        else:
            times = ", ".join(f"{k} {v:.1f} s" for k, v in row["seconds"].items())
            print(f"PRDC {row['n']} x {row['n']}, {row['dim']}-d, k=5, chunk {row['chunk']}: {times}")


if __name__ == "__main__":
    main()
