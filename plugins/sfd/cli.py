"""``diffsampler sfd train``: distil a student with SFD and write it (added by ``register_commands``).

Torch and the trainer are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["add_commands", "train"]

def _check_outputs(out: Path, checkpoint: Path | None) -> None:
    """Refuse, before the teacher is loaded, a student path or checkpoint folder that cannot be written."""
    from diffsampler.outputs import check_output_file, check_output_folder

    check_output_file(out.with_suffix(".json"), flag="--out")
    check_output_file(out.with_suffix(".safetensors"), flag="--out")
    if checkpoint is not None:
        check_output_folder(checkpoint, flag="--checkpoint")


def train(
    out: Annotated[Path, typer.Option(help="student to write: FILE.json + FILE.safetensors")] = Path("sfd-student.json"),
    model: Annotated[str, typer.Option(help="teacher: registered EDM model name or EDM model file")] = "digits",
    model_opt: Annotated[list[str] | None, typer.Option("--model-opt", help="model option key=value")] = None,
    steps: Annotated[int, typer.Option(help="student sigmas (steps + 1); 4 with --afs = 2 NFE")] = 4,
    m: Annotated[int, typer.Option("--M", help="teacher points inserted between two student points")] = 3,
    teacher: Annotated[
        str | None, typer.Option(help="teacher solver (default: the seed's, dpmpp; euler when --model is an SFD student)")
    ] = None,
    teacher_opt: Annotated[
        list[str] | None,
        typer.Option("--teacher-opt", help="teacher solver option key=value (default for dpmpp: "
                     "max_order=3, thresholding=dynamic, the seed's)"),
    ] = None,
    teacher_afs: Annotated[
        bool | None,
        typer.Option("--teacher-afs/--no-teacher-afs",
                     help="teacher run with AFS (default: off; an SFD student teacher's own AFS, the seed's second stage)"),
    ] = None,
    sigma_min: Annotated[
        float | None, typer.Option(help="lowest sigma trained (default: the seed's 0.006, or a student teacher's own)")
    ] = None,
    sigma_max: Annotated[
        float | None, typer.Option(help="highest sigma trained (default: the seed's 80, or a student teacher's own)")
    ] = None,
    rho: Annotated[float, typer.Option(help="rho of the polynomial schedule")] = 7.0,
    afs: Annotated[bool, typer.Option(help="analytical first step (free first student step)")] = True,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 5e-5,
    batch: Annotated[int, typer.Option(help="trajectories per iteration (all processes)")] = 128,
    total_kimg: Annotated[float, typer.Option(help="thousands of trajectories to train on")] = 200.0,
    ema: Annotated[float, typer.Option(help="EMA half-life in kimg (0: off)")] = 0.0,
    step_condition: Annotated[
        bool, typer.Option(help="SFD-v: one student for every step count --min-steps..--max-steps")
    ] = False,
    min_steps: Annotated[int, typer.Option(help="SFD-v: fewest student sigmas")] = 4,
    max_steps: Annotated[int, typer.Option(help="SFD-v: most student sigmas")] = 7,
    labels: Annotated[str, typer.Option(
        help="class labels of the training trajectories: none, random (per seed), seed (seed mod classes) or a "
             "class index; auto: random for a class-conditional model without --model-opt class_label, as the "
             "seed (an SFD student teacher: the labels it was trained on), else none")] = "auto",
    lpips: Annotated[
        float | None, typer.Option(help="LPIPS weight on the last step (default: 1 when the teacher is a student)")
    ] = None,
    lpips_vgg: Annotated[str | None, typer.Option(help="local VGG16 weights for LPIPS (vgg16-397923af.pth)")] = None,
    lpips_lin: Annotated[str | None, typer.Option(help="local LPIPS linear weights (lpips_weights.pt / vgg.pth)")] = None,
    seed: Annotated[int | None, typer.Option(help="first training-noise seed")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint directory (resumable)")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="iterations between checkpoints (0: only at the end)")] = 50,
    resume: Annotated[bool, typer.Option(help="continue from --checkpoint when it holds a state")] = True,
    log_every: Annotated[int, typer.Option(help="iterations between loss lines")] = 10,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Distil a teacher into an Euler student with SFD (Zhou et al. NeurIPS 2024) and save it.

    Sample it: diffsampler sample --model FILE.json (Euler on its own sigmas). Runs under
    torchrun (gradients are summed over the processes; every process takes its share of each
    batch).
    """
    import torch

    import diffsampler as ds
    from diffsampler.cli._common import parse_pairs
    from diffsampler.devices import resolve_device
    from diffsampler.distributed import device_for_rank, setup, teardown

    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    _check_outputs(out, checkpoint)
    dist = setup(device)
    device = device_for_rank(device, dist)
    options: dict[str, Any] = dict(
        num_steps=steps, M=m, teacher=teacher, teacher_afs=teacher_afs, rho=rho, afs=afs, lr=lr, batch=batch,
        total_kimg=total_kimg, ema=ema, device=device, step_condition=step_condition, min_steps=min_steps,
        max_steps=max_steps, labels=labels, lpips=lpips, lpips_vgg=lpips_vgg, lpips_lin=lpips_lin,
        sigma_min=sigma_min, sigma_max=sigma_max,
    )
    if teacher_opt is not None:
        options["teacher_options"] = ",".join(f"{k}={v}" for k, v in parse_pairs(teacher_opt, "--teacher-opt").items())
    if seed is not None:
        options["seed"] = seed
    distiller = ds.get_distiller("sfd", **options)
    model_options = parse_pairs(model_opt, "--model-opt")
    try:
        _train(distiller, model, model_options, out, checkpoint, checkpoint_every, resume, log_every)
    finally:
        teardown()


def _train(distiller: Any, model_name: str, model_options: dict[str, Any], out: Path, checkpoint: Path | None,
           checkpoint_every: int, resume: bool, log_every: int) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    import diffsampler as ds
    from diffsampler.cli._common import console, stop_between_steps
    from diffsampler.distributed import current, on_main_first

    main = current().is_main
    teacher = ds.get_model(model_name, **model_options)
    trainer = distiller.trainer(teacher, teacher_info={"name": model_name, "options": model_options})
    if checkpoint is not None and resume and (checkpoint / "state.json").is_file():
        trainer.load_checkpoint(checkpoint)
        if main:
            console.print(f"resumed from {checkpoint} at iteration {trainer.iteration}/{trainer.iterations}",
                          highlight=False, soft_wrap=True)
    o = distiller.options
    progress = Progress(TextColumn("SFD {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        disable=not main)
    with progress, stop_between_steps(show=main) as interruption:
        nfes = sorted({n - 1 - int(o.afs) for n in o.step_counts})
        label = f"NFE {nfes[0]}" if len(nfes) == 1 else f"NFE {nfes[0]}-{nfes[-1]}"
        # a resumed run shows the loss of its last iteration, not nan, until the next one ends
        last = f"{trainer.history[-1]['loss']:.5f}" if trainer.history else "-"
        task = progress.add_task(label, total=trainer.iterations, completed=trainer.iteration, loss=last)

        def report(record: Any) -> None:
            it = int(record["iteration"])
            progress.update(task, completed=it, loss=f"{record['loss']:.5f}")
            if main and log_every and (it % log_every == 0 or it == trainer.iterations):
                steps = " ".join(f"{record[f'loss{i}']:.5f}" for i in range(int(record["steps"]) - 1))
                perceptual = f"  lpips {record['lpips']:.5f}" if "lpips" in record else ""
                progress.console.print(f"iter {it:>6d}  kimg {it * o.batch / 1000:8.2f}  lr {trainer.lr_at(it - 1):.2e}  "
                                       f"loss {record['loss']:.5f}  per step [{steps}]{perceptual}"
                                       + (f"  ({int(record['steps'])} sigmas)" if o.step_condition else ""),
                                       highlight=False)

        trainer.train(progress=report, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                      stop=interruption.requested)
    if interruption.signum is not None and trainer.iteration < trainer.iterations:
        _interrupted(trainer, checkpoint, interruption.signum, main)
    def save() -> tuple[Any, Any]:
        student = trainer.result()
        return student, student.save(out)

    saved = on_main_first(save)  # rank 0 writes while the others wait
    if saved is None:
        return
    student, path = saved
    counts = list(student.sigma_table)
    served = f"{student.nfe} NFE" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} sigmas"
    console.print(f"wrote {path} ({served}, {trainer.elapsed_s:.1f} s of training)")
    pick = f" --model-opt steps={student.num_steps}" if student.step_condition is not None else ""
    console.print(f"use: diffsampler sample --model {path}{pick}   (Euler on its own sigmas"
                  + (", with AFS)" if student.afs else ")"), highlight=False, soft_wrap=True)


def _interrupted(trainer: Any, checkpoint: Path | None, signum: int, main: bool) -> None:
    """Say what an interrupted run kept, then exit with ``128 + signum`` (130 for Ctrl-C)."""
    from rich.markup import escape

    from diffsampler.cli._common import err_console

    if main:
        where = f"iteration {trainer.iteration}/{trainer.iterations}"
        if checkpoint is not None:
            message = f"interrupted at {where}; state saved to {checkpoint}: rerun the same command to resume"
        else:
            message = (f"interrupted at {where}; nothing was saved (no --checkpoint): "
                       "give --checkpoint DIR to make a run resumable")
        err_console.print(escape(message), highlight=False, soft_wrap=True)
    raise typer.Exit(128 + signum)


def add_commands(app: typer.Typer) -> None:
    """Add ``diffsampler sfd ...`` to the app."""
    sfd_app = typer.Typer(help="SFD: distil a few-step Euler student (Zhou et al. NeurIPS 2024).", no_args_is_help=True)
    sfd_app.command("train")(train)
    app.add_typer(sfd_app, name="sfd")
