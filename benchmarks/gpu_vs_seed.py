"""GPU sampling speed against the seed (issue: >= 3x the seed's fp32-eager throughput).

EDM CIFAR-10 DDPM++ (random weights), iPNDM NFE 5 (6 polynomial rho-7 sigmas): the seed's own
network and sampler (``diff-solvers-main`` of github.com/zju-pi/diff-sampler, fetched beside
this repository, never committed) run in its default mode (fp32 storage, PyTorch's default
TF32 convolutions, eager), then ``diffsampler.bench`` runs our variants on the same random state
dict (loaded ``strict=True`` into our network). Optionally profiles one variant (top CUDA
kernels). Prints rows as they finish and writes everything to ``--out``.

    python benchmarks/gpu_vs_seed.py --seed-dir ../diff-sampler/diff-solvers-main \\
        --batches 128,512 --variants fp16+cl+compile+graph,tf32+cl+compile+graph --out gpu.json \\
        [--profile fp16+cl+compile+graph]

Runs from a source checkout without installation: the plugins are registered directly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch
import torch._inductor.config

CONFIG = dict(img_resolution=32, img_channels=3, label_dim=0, use_fp16=False, model_type="SongUNet",
              embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
              augment_dim=9, dropout=0.13)


def registry() -> None:
    import diffsampler as ds
    import diffsampler.plugins.edm as edm
    import diffsampler.plugins.models as models
    import diffsampler.plugins.schedules as schedules
    import diffsampler.plugins.solvers as solvers

    try:
        ds.get_registry().get("model", "edm-cifar10")
    except ds.DiffSamplerError:  # a source checkout without entry points (the device machine)
        ds.reset_registry(ds.discover(entry_points=False, plugins=[
            ("solvers", solvers), ("schedules", schedules), ("models", models), ("edm", edm)]))


def seed_throughput(net: Any, sampler: Any, batch: int, repeat: int) -> float:
    lat = torch.randn(batch, 3, 32, 32, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))

    def run() -> Any:
        return sampler(net, lat, num_steps=6, sigma_min=0.002, sigma_max=80, schedule_type="polynomial",
                       schedule_rho=7, max_order=4)

    for _ in range(2):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def profile(model: str, variant: str, batch: int, top: int = 25) -> list[dict[str, Any]]:
    """Top CUDA kernels of one sampling run of ``variant`` (after warm-up; no CUDA graph)."""
    import diffsampler as ds
    from diffsampler.bench import Variant, build_model
    from diffsampler.tuning import cudnn_autotune

    v = Variant.parse(variant)
    denoiser = build_model(model, {"device": "cuda"}, v)
    sigmas = ds.get_schedule("polynomial", rho=7.0).sigmas(6, 0.002, 80.0)
    x = torch.randn(batch, 3, 32, 32, device="cuda") * 80
    solver = ds.get_solver("ipndm", max_order=4)
    with cudnn_autotune(v.autotune):
        for _ in range(3):
            solver.sample(denoiser, x, sigmas, check_finite=False)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            solver.sample(denoiser, x, sigmas, check_finite=False)
            torch.cuda.synchronize()
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:top]:
        rows.append({"kernel": e.key[:100], "calls": e.count, "ms": e.device_time_total / 1000})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed-dir", type=Path, default=None, help="the seed's diff-solvers-main folder")
    p.add_argument("--batches", default="128,512")
    p.add_argument("--variants", default="fp32,fp16+cl,fp16+cl+compile+graph,fp16+cl+compile+graph+tune,tf32+cl+compile+graph+tune")
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", default="", help="a variant to profile at the largest batch")
    p.add_argument("--out", type=Path, default=Path("gpu_vs_seed.json"))
    a = p.parse_args()
    registry()
    from diffsampler.bench import Variant, run_bench
    from diffsampler.plugins.edm.checkpoint import save_network
    from diffsampler.plugins.edm.precond import EDMPrecond

    batches = [int(b) for b in a.batches.split(",")]
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "seed": [], "ours": [], "profile": []}

    def dump() -> None:
        a.out.write_text(json.dumps(result, indent=1))

    torch.manual_seed(0)
    ours = EDMPrecond(**CONFIG)  # the seed's code has EDM's preconditioning only; the U-Net is the same
    if a.seed_dir is not None:
        sys.path.insert(0, str(a.seed_dir))
        from models.networks_edm import EDMPrecond as SeedEDM  # the seed's module layout
        from solvers import ipndm_sampler

        sys.path.pop(0)
        seed_net = SeedEDM(**CONFIG).cuda().eval()
        ours.load_state_dict({k: v.cpu() for k, v in seed_net.state_dict().items()}, strict=True)
        with torch.no_grad():
            for b in batches:
                ips = seed_throughput(seed_net, ipndm_sampler, b, a.repeat)
                result["seed"].append({"batch": b, "images_per_s": ips})
                print(f"seed fp32 eager (TF32 convs)  batch {b}: {ips:8.1f} img/s", flush=True)
        dump()
        del seed_net
    path = str(save_network(ours, "/tmp/gpu_vs_seed_ddpmpp"))

    def on_row(row: Any) -> None:
        data = attrs.asdict(row)
        result["ours"].append(data)
        print("ours", json.dumps(data), flush=True)
        dump()

    result["inductor_freezing"] = bool(torch._inductor.config.freezing)  # TORCHINDUCTOR_FREEZING=1
    if a.variants:
        run_bench(model=path, solver="ipndm", nfe=5, batches=batches, device="cuda", repeat=a.repeat, warmup=2,
                  variants=[Variant.parse(v) for v in a.variants.split(",")], compile_mode=a.compile_mode,
                  on_row=on_row)
    if a.profile:
        result["profile"] = profile(path, a.profile, max(batches))
        for r in result["profile"]:
            print(f"{r['ms']:9.2f} ms {r['calls']:5d}x  {r['kernel']}", flush=True)
        dump()


if __name__ == "__main__":
    main()
