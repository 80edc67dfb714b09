"""Images/s of the output writers (png folder, npz, zip) at batch 512 of 3x32x32 on CPU.

The writer must never be the bottleneck of a GPU run (an H200 samples ~1,000-1,500 CIFAR-sized
images/s at NFE 5).  python benchmarks/writers.py [--batch 512] [--batches 4]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np

from diffsampler.outputs import RunDirectory
from diffsampler.seeds import plan_batches


def bench(fmt: str, batch: int, batches: int) -> float:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(batch, 3, 32, 32)).astype(np.float32)
    plan = plan_batches(list(range(batch * batches)), batch)
    with tempfile.TemporaryDirectory() as tmp:
        rundir = RunDirectory(tmp, fmt, (3, 32, 32))
        rundir.prepare({"config": {}})
        start = time.perf_counter()
        for b in plan:
            rundir.write(b, x)
        rundir.finish(plan, {})
        return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=4)
    opts = parser.parse_args()
    print(f"machine: {platform.platform()}; batch {opts.batch} x 3x32x32, {opts.batches} batches")
    for fmt in ("npz", "png", "zip"):
        print(f"{fmt:4s} {bench(fmt, opts.batch, opts.batches):9.0f} images/s (write + finish)")


if __name__ == "__main__":
    main()
