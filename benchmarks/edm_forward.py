"""Forward time of EDM's CIFAR-10 network (VP, DDPM++: SongUNet, 128 channels, [2, 2, 2],
4 blocks, attention at 16x16, ~56M parameters) with random weights, through the diffsampler
Denoiser (what a solver calls once per NFE).

    python benchmarks/edm_forward.py [--batch 128] [--repeat 3] [--device cpu|cuda]
        [--precision fp32|tf32|fp16|bf16] [--channels-last] [--threads N] [--json]

Numbers are per forward pass of one batch (median over ``--repeat`` after ``--warmup``).
Never a timed assert: this only prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

CIFAR10_DDPMPP = dict(
    img_resolution=32, img_channels=3, label_dim=0, use_fp16=False, model_type="SongUNet",
    embedding_type="positional", encoder_type="standard", decoder_type="standard",
    channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
    augment_dim=9, dropout=0.13,
)
"""EDM's ``train.py --arch=ddpmpp --precond=vp`` network for CIFAR-10 (edm-cifar10-32x32-uncond-vp)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()

    import torch

    from diffsampler.plugins.edm.denoiser import EDMDenoiser
    from diffsampler.plugins.edm.precond import VPPrecond

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    device = torch.device(opts.device)
    net = VPPrecond(**CIFAR10_DDPMPP)
    params = sum(p.numel() for p in net.parameters())
    model = EDMDenoiser(
        net, precision=opts.precision, channels_last=opts.channels_last, device=device
    )
    x = torch.randn(opts.batch, *model.shape, device=device)
    sigma = torch.full((opts.batch,), 2.0, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for i in range(opts.warmup + opts.repeat):
            sync()
            start = time.perf_counter()
            model(x * 2.0, sigma)
            sync()
            if i >= opts.warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    row = {
        "network": "EDM CIFAR-10 VP DDPM++ (SongUNet)",
        "parameters": params,
        "batch": opts.batch,
        "device": where,
        "precision": opts.precision,
        "channels_last": opts.channels_last,
        "median_s": median,
        "min_s": min(times),
        "images_per_s": opts.batch / median,
        "repeat": opts.repeat,
        "torch": torch.__version__,
    }
    if opts.json:
        print(json.dumps(row, indent=2))
        return
    print(f"{row['network']}: {params / 1e6:.1f}M parameters; {where}; torch {torch.__version__}")
    print(
        f"batch {opts.batch} {opts.precision}{' channels-last' if opts.channels_last else ''}: "
        f"median {median * 1e3:.1f} ms/forward (min {min(times) * 1e3:.1f}, {opts.repeat} runs), "
        f"{opts.batch / median:.1f} images/s"
    )


if __name__ == "__main__":
    main()
