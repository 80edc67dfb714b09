"""Train a small EDM denoiser on scikit-learn's bundled ``digits`` (the embedded ``digits`` model).

Karras et al. 2022 (arXiv:2206.00364): EDM preconditioning (Table 1, ``sigma_data = 0.5``) and
its training loss (Sec. 5, Eq. 8 and Table 1): ``ln sigma ~ N(P_mean, P_std^2)`` with
``P_mean = -1.2, P_std = 1.2``, weight ``lambda(sigma) = (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2``, loss ``lambda(sigma) |D(y + sigma n; sigma, c) - y|^2``. Weights are
averaged with EDM's exponential moving average (half-life in images, ramped up with the
number of images seen); the EMA is what is saved.

The data are the 1,797 8x8 images of ``sklearn.datasets.load_digits`` (grey levels 0..16,
mapped to [-1, 1]), at 8x8 or bilinearly upsampled. The model is class-conditional (10
classes) and trained with label dropout, so the all-zero label (``cond=None``) samples any
digit and ``cond=k`` samples the digit k.

Run::

    diffsampler train-denoiser --out plugins/edm/weights/digits
    python -m diffsampler.plugins.edm.train --out plugins/edm/weights/digits

Both write ``digits.safetensors`` and ``digits.json`` (the config the ``edm`` loader reads).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["TrainConfig", "digits_dataset", "edm_loss", "main", "train"]


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything that determines a training run (saved into the model's JSON)."""

    steps: int = 3200
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    resolution: int = 8
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.1
    label_dropout: float = 0.2
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    ema_halflife_kimg: float = 50.0
    ema_rampup_ratio: float = 0.1
    seed: int = 0
    threads: int = 1
    device: str = "cpu"


def digits_dataset(resolution: int = 8) -> tuple[Any, Any]:
    """``(images [1797, 1, r, r] in [-1, 1], labels [1797])`` from scikit-learn's digits."""
    import torch

    from diffsampler.errors import require

    datasets = require("sklearn.datasets", extra="digits", purpose="training on the digits data")
    bunch = datasets.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if resolution != 8:
        images = torch.nn.functional.interpolate(
            images, size=(resolution, resolution), mode="bilinear", align_corners=False
        ).clamp(-1, 1)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def edm_loss(net: Any, images: Any, labels: Any, cfg: TrainConfig, generator: Any = None) -> Any:
    """EDM's loss (Karras et al. 2022, Eq. 8 with Table 1's weighting), averaged over the batch."""
    import torch

    n = images.shape[0]
    rnd = torch.randn([n, 1, 1, 1], device=images.device, generator=generator)
    sigma = (rnd * cfg.p_std + cfg.p_mean).exp()
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    noise = torch.randn(images.shape, device=images.device, generator=generator) * sigma
    denoised = net(images + noise, sigma, labels)
    return (weight * (denoised - images) ** 2).mean()


def build_network(cfg: TrainConfig) -> Any:
    """The untrained EDMPrecond + SongUNet (DDPM++-style) of ``cfg``."""
    from .precond import EDMPrecond

    return EDMPrecond(
        img_resolution=cfg.resolution, img_channels=1, label_dim=10, sigma_data=cfg.sigma_data,
        model_type="SongUNet", model_channels=cfg.model_channels,
        channel_mult=list(cfg.channel_mult), num_blocks=cfg.num_blocks,
        attn_resolutions=list(cfg.attn_resolutions), dropout=cfg.dropout,
        label_dropout=cfg.label_dropout, embedding_type="positional", encoder_type="standard",
        decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
    )


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train, then write ``<out>.safetensors`` and ``<out>.json``; returns the JSON path.

    ``progress(step, steps, loss)`` is called every 50 steps.
    """
    import copy

    import torch

    from .checkpoint import save_network

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    images, targets = digits_dataset(cfg.resolution)
    images, targets = images.to(device), targets.to(device)
    onehot = torch.nn.functional.one_hot(targets, 10).to(torch.float32)

    net = build_network(cfg).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    start = time.monotonic()
    deadline = start + 60 * cfg.minutes if cfg.minutes else math.inf
    n_data = images.shape[0]
    seen = 0
    avg = 0.0
    step = 0
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, n_data, (cfg.batch_size,), device=device, generator=gen)
        # Linear warm-up, then a cosine decay to 10% over the run (steps or wall time).
        frac = step / cfg.steps
        if cfg.minutes:
            frac = max(frac, (time.monotonic() - start) / (60 * cfg.minutes))
        frac = min(frac, 1.0)
        scale = min(1.0, step / max(cfg.warmup_steps, 1)) * (0.55 + 0.45 * math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * scale
        loss = edm_loss(net, images[idx], onehot[idx], cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()
        seen += cfg.batch_size
        # EMA with EDM's half-life rule: beta = 0.5 ** (batch / min(halflife, ratio * seen)).
        halflife = min(cfg.ema_halflife_kimg * 1000, cfg.ema_rampup_ratio * seen)
        beta = 0.5 ** (cfg.batch_size / max(halflife, 1e-8))
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.copy_(p_net.detach().lerp(p_ema, beta))
        value = float(loss.detach())
        avg = 0.98 * avg + 0.02 * value if step > 1 else value
        if progress is not None and step % 50 == 0:
            progress(step, cfg.steps, avg)
        if time.monotonic() > deadline:
            break
    elapsed = time.monotonic() - start
    record = attrs.asdict(cfg)
    record.update(steps_done=step, images_seen=seen, seconds=round(elapsed, 1), final_loss=round(avg, 5))
    extra = {
        "sigma_min": 0.002,
        "sigma_max": 80.0,
        "training": {
            "data": "sklearn.datasets.load_digits (1797 images, 8x8, grey 0..16 -> [-1, 1])",
            "loss": "EDM (Karras et al. 2022, Eq. 8), P_mean=-1.2, P_std=1.2, sigma_data=0.5",
            "config": _jsonable(record),
        },
    }
    meta = {"diffsampler.edm.config": json.dumps({k: _jsonable(v) for k, v in record.items()})}
    return save_network(ema.cpu(), out, metadata=meta, **extra)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.replace(" ", "").split(",") if t)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diffsampler.plugins.edm.train``: train and save a digits model."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", default="digits", help="output path without suffix")
    for field in attrs.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, tuple):
            parser.add_argument(flag, type=_int_tuple, default=default, help="comma-separated")
        elif field.name == "minutes":
            parser.add_argument(flag, type=float, default=None, help="stop after this wall time")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    cfg = TrainConfig(**args)

    def report(step: int, steps: int, loss: float) -> None:
        print(f"step {step}/{steps} loss {loss:.4f}", flush=True)

    path = train(cfg, out, progress=report)
    print(f"wrote {path} and {Path(path).with_suffix('.safetensors')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
