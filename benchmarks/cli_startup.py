"""Wall time of `diffsampler list` and `diffsampler --help` (target: under 1.5 s each).

    python benchmarks/cli_startup.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time


def measure(args: list[str], repeat: int) -> list[float]:
    exe = shutil.which("diffsampler")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "diffsampler", *args]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    rows = {}
    for name, args in {"diffsampler list": ["list"], "diffsampler --help": ["--help"]}.items():
        t = measure(args, opts.repeat)
        rows[name] = {"median_s": statistics.median(t), "max_s": max(t)}
    if opts.json:
        print(json.dumps({"machine": platform.platform(), "results": rows}, indent=2))
        return
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}")
    for name, row in rows.items():
        flag = "ok" if row["median_s"] < 1.5 else "OVER 1.5 s"
        print(f"{name:22s} median {row['median_s']:.3f} s  max {row['max_s']:.3f} s  {flag}")


if __name__ == "__main__":
    main()
