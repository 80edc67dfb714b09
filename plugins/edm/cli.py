"""The ``edm`` plugin's CLI commands (added through the ``register_commands`` hook).

``diffsampler train-denoiser``: train a small EDM denoiser on scikit-learn's digits (the
embedded ``digits`` model is made with it). Torch is imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["add_commands", "train_denoiser"]


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from diffsampler.errors import OptionError

    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise OptionError(f"{flag} expects comma-separated integers, got {text!r}") from None


def train_denoiser(
    out: Annotated[Path, typer.Option(help="output path without suffix (.safetensors and .json are written)")] = Path("digits"),
    steps: Annotated[int, typer.Option(min=1, help="optimiser steps")] = 3200,
    minutes: Annotated[float | None, typer.Option(help="stop after this wall time (minutes)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per step")] = 128,
    lr: Annotated[float, typer.Option(help="peak Adam learning rate")] = 2e-3,
    resolution: Annotated[int, typer.Option(help="image size: 8 (native) or upsampled, e.g. 16")] = 8,
    model_channels: Annotated[int, typer.Option(help="SongUNet base channels")] = 32,
    channel_mult: Annotated[str, typer.Option(help="per-resolution channel multipliers")] = "1,2",
    num_blocks: Annotated[int, typer.Option(help="residual blocks per resolution")] = 1,
    attn_resolutions: Annotated[str, typer.Option(help="resolutions with self-attention")] = "",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "cpu",
) -> None:
    """Train a small EDM denoiser on scikit-learn's digits (EDM loss, EMA weights).

    Every option is checked, and the output files too, before the first step: errors are one
    line (exit status 2). Ctrl-C or SIGTERM ends training after the current step and writes the
    network trained so far (exit status 130 / 143).
    """
    from diffsampler.cli._common import err_console, stop_between_steps

    from .train import TrainConfig, progress_printer, train

    cfg = TrainConfig(
        steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, resolution=resolution,
        model_channels=model_channels, channel_mult=_ints(channel_mult, "--channel-mult"),
        num_blocks=num_blocks, attn_resolutions=_ints(attn_resolutions, "--attn-resolutions"),
        seed=seed, threads=threads, device=device,
    )
    done = 0

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal done
        done = step
        printer(step, total, loss)

    printer = progress_printer(typer.echo)
    # an interrupted run never replaces a network that was there before it
    existed = any(out.with_suffix(suffix).exists() for suffix in (".json", ".safetensors"))
    base = out.with_suffix("")  # the files are base.json and base.safetensors
    aside = base.with_name(f"{base.name}-interrupted") if existed else None
    with stop_between_steps(show=True, step="step") as interruption:
        path = train(cfg, out, progress=progress, stop=interruption.requested, out_if_stopped=aside)
    typer.echo(f"wrote {path} and {path.with_suffix('.safetensors')}")
    if interruption.signum is not None and done < cfg.steps:
        kept = f" ({out} is kept: it was there before)" if aside is not None else ""
        err_console.print(f"interrupted at step {done}/{cfg.steps}; the network trained so far (EMA weights) "
                          f"was written to {path.with_suffix('')}{kept}", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + interruption.signum)


def add_commands(app: typer.Typer) -> None:
    """Add this plugin's commands to the ``diffsampler`` app."""
    app.command("train-denoiser")(train_denoiser)
