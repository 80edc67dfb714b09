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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from diffsampler.errors import DiffSamplerError, OptionError

__all__ = ["TrainConfig", "digits_dataset", "edm_loss", "main", "output_paths", "progress_printer", "train"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise OptionError(f"{_flag(attribute.name)} must be > 0, got {value!r}")


def _at_least(low: int) -> Callable[[Any, attrs.Attribute[Any], int], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < low:
            raise OptionError(f"{_flag(attribute.name)} must be >= {low}, got {value!r}")

    return check


def _fraction(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < 1:
        raise OptionError(f"{_flag(attribute.name)} must be in [0, 1), got {value!r}")


def _optional_positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(instance, attribute, value)


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything that determines a training run (saved into the model's JSON).

    Invalid values raise :class:`OptionError` naming the command-line flag, before any work.
    """

    steps: int = attrs.field(default=3200, validator=_at_least(1))
    minutes: float | None = attrs.field(default=None, validator=_optional_positive)
    batch_size: int = attrs.field(default=128, validator=_at_least(1))
    lr: float = attrs.field(default=2e-3, validator=_positive)
    warmup_steps: int = attrs.field(default=200, validator=_at_least(0))
    resolution: int = attrs.field(default=8, validator=_at_least(1))
    model_channels: int = attrs.field(default=32, validator=_at_least(1))
    channel_mult: tuple[int, ...] = (1, 2)
    num_blocks: int = attrs.field(default=1, validator=_at_least(1))
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = attrs.field(default=0.1, validator=_fraction)
    label_dropout: float = attrs.field(default=0.2, validator=_fraction)
    p_mean: float = -1.2
    p_std: float = attrs.field(default=1.2, validator=_positive)
    sigma_data: float = attrs.field(default=0.5, validator=_positive)
    ema_halflife_kimg: float = attrs.field(default=50.0, validator=_positive)
    ema_rampup_ratio: float = attrs.field(default=0.1, validator=_positive)
    seed: int = attrs.field(default=0, validator=_at_least(0))
    threads: int = attrs.field(default=1, validator=_at_least(0))
    device: str = "cpu"

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The network's feature-map sizes, one per ``channel_mult`` level (halved at each)."""
        return tuple(self.resolution >> level for level in range(len(self.channel_mult)))

    def __attrs_post_init__(self) -> None:
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise OptionError(f"--channel-mult must be one or more integers >= 1, got {self.channel_mult!r}")
        levels = len(self.channel_mult)
        factor = 2 ** (levels - 1)
        if self.resolution % factor:
            raise OptionError(
                f"--resolution {self.resolution} must be a multiple of {factor}: --channel-mult "
                f"{','.join(map(str, self.channel_mult))} gives {levels} levels, each after the first "
                "halving the image"
            )
        unknown = [r for r in self.attn_resolutions if r not in self.resolutions]
        if unknown:
            raise OptionError(
                f"--attn-resolutions {','.join(map(str, unknown))}: not a resolution of the network; "
                f"its resolutions are {','.join(map(str, self.resolutions))}"
            )


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


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """``(<out>.safetensors, <out>.json)``, checked writable (a missing folder is created), so a
    bad ``--out`` is refused before training rather than after it."""
    from diffsampler.outputs import check_output_file

    base = Path(out)
    return (check_output_file(base.with_suffix(".safetensors"), flag="--out"),
            check_output_file(base.with_suffix(".json"), flag="--out"))


def progress_printer(
    echo: Callable[[str], None], *, fraction: float = 0.05, seconds: float = 10.0
) -> Callable[[int, int, float], None]:
    """A ``progress`` callback for :func:`train` that prints ``step N/M  loss L`` about every
    ``fraction`` of the steps, at least every ``seconds`` and at the last step."""
    last = time.monotonic()

    def report(step: int, total: int, loss: float) -> None:
        nonlocal last
        every = max(1, round(total * fraction))
        now = time.monotonic()
        if step % every == 0 or step == total or now - last >= seconds:
            last = now
            echo(f"step {step}/{total}  loss {loss:.4f}")

    return report


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    stop: Callable[[], bool] | None = None,
    out_if_stopped: str | Path | None = None,
) -> Path:
    """Train, then write ``<out>.safetensors`` and ``<out>.json``; returns the JSON path.

    The device and the output paths are checked before the first step (:class:`OptionError`).
    ``progress(step, steps, loss)`` is called after every step (see :func:`progress_printer`).
    ``stop()`` is asked after every step: True ends training there, as ``--minutes`` does (the
    files record ``steps_done``), and the files go to ``out_if_stopped`` when given (so that an
    interrupted run does not replace a finished network at ``out``).
    """
    import copy

    import torch

    from diffsampler.devices import resolve_device

    from .checkpoint import save_network

    device = torch.device(resolve_device(cfg.device))
    output_paths(out)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
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
    stopped = False
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
        if progress is not None:
            progress(step, cfg.steps, avg)
        if stop is not None and stop():
            stopped = True
            break
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
    target = out_if_stopped if stopped and out_if_stopped is not None else out
    return save_network(ema.cpu(), target, metadata=meta, **extra)


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
    try:
        path = train(TrainConfig(**args), out, progress=progress_printer(lambda line: print(line, flush=True)))
    except DiffSamplerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {Path(path).with_suffix('.safetensors')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
