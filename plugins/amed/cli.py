"""``diffsampler amed train``: train an AMED predictor and write it (added by ``register_commands``).

Torch and the training are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["add_commands", "train", "usage_hint"]


def steps_for(solver: str, *, steps: int | None, nfe: int | None, afs: bool) -> int:
    """Sigmas of the student for ``--steps`` or ``--nfe`` (each step spends 2 NFE; AFS saves 1)."""
    from diffsampler.errors import OptionError

    if steps is not None and nfe is not None:
        raise OptionError("give --steps or --nfe, not both")
    if steps is not None:
        return steps
    nfe = 5 if nfe is None else nfe
    n, rest = divmod(nfe + int(afs), 2)
    if rest or n < 1:
        reach = "odd" if afs else "even"
        near = [n for n in (nfe - 1, nfe + 1) if n >= (1 if afs else 2)]
        other = "--no-afs" if afs else "--afs"
        raise OptionError(
            f"NFE {nfe} is not reachable with AMED ({solver}){' and AFS' if afs else ''}: "
            f"each step spends 2 NFE{', AFS saves 1' if afs else ''}, so the NFE is {reach} "
            f"(--nfe {' or '.join(map(str, near))}, or {other})"
        )
    return n + 1


def train(
    out: Annotated[Path, typer.Option(help="predictor file to write (.safetensors)")] = Path("amed.safetensors"),
    model: Annotated[str, typer.Option(help="registered model name or model file (needs a bottleneck)")] = "digits",
    model_opt: Annotated[list[str] | None, typer.Option("--model-opt", help="model option key=value")] = None,
    solver: Annotated[str, typer.Option(help="student: amed (AMED-Solver), euler, ipndm, dpm, dpmpp (AMED-Plugin)")] = "amed",
    steps: Annotated[int | None, typer.Option(help="sigmas of the student's schedule (steps + 1)")] = None,
    nfe: Annotated[int | None, typer.Option(help="NFE of the student (default 5)")] = None,
    teacher: Annotated[str, typer.Option(help="teacher solver: heun, dpm, dpmpp, euler, ipndm")] = "heun",
    m: Annotated[int, typer.Option("--m", help="teacher points inserted per student interval (M)")] = 1,
    schedule: Annotated[str, typer.Option(help="schedule of student and teacher")] = "polynomial",
    rho: Annotated[float, typer.Option(help="rho of the schedule")] = 7.0,
    afs: Annotated[bool, typer.Option(help="analytical first step (seed default: on)")] = True,
    scale_dir: Annotated[float, typer.Option(help="direction scale bound (0: off)")] = 0.01,
    scale_time: Annotated[float, typer.Option(help="time scale bound (0: off)")] = 0.0,
    max_order: Annotated[int, typer.Option(help="max order of ipndm / dpmpp")] = 3,
    predict_x0: Annotated[bool, typer.Option(help="dpmpp: data prediction")] = True,
    lower_order_final: Annotated[bool, typer.Option(help="dpmpp: lower order at the end")] = True,
    thresholding: Annotated[
        str | None, typer.Option(help="dpmpp with data prediction: 'dynamic' as the seed (default: off)")
    ] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 5e-3,
    batch: Annotated[int, typer.Option(help="trajectories per iteration")] = 16,
    total_kimg: Annotated[float, typer.Option(help="thousands of training trajectories")] = 0.2,
    seed: Annotated[int | None, typer.Option(help="first noise seed")] = None,
    labels: Annotated[str, typer.Option(
        help="class labels of the trajectories: none, random (per seed), seed (seed mod classes) or a class "
             "index; auto: random for a class-conditional model, as the seed, else none")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Train an AMED predictor (Zhou et al. CVPR 2024) for a model and a student solver.

    Sample with it: diffsampler sample --solver amed[-STUDENT] --opt predictor=FILE --steps N [--afs].
    """
    import time

    import torch
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import diffsampler as ds
    from diffsampler.cli._common import (
        console,
        err_console,
        parse_pairs,
        print_json,
        stop_between_steps,
    )
    from diffsampler.devices import resolve_device
    from diffsampler.outputs import check_output_file

    check_output_file(out)  # before any work: a training is not lost to a bad --out
    existed = out.exists()
    torch.set_num_threads(threads)
    device = resolve_device(device)
    num_steps = steps_for(solver, steps=steps, nfe=nfe, afs=afs)
    options: dict[str, Any] = dict(
        solver=solver, num_steps=num_steps, teacher=teacher, m=m, schedule=schedule, rho=rho, afs=afs,
        scale_dir=scale_dir, scale_time=scale_time, max_order=max_order, predict_x0=predict_x0,
        lower_order_final=lower_order_final, thresholding=thresholding, lr=lr, batch=batch, total_kimg=total_kimg, labels=labels,
    )
    if seed is not None:
        options["seed"] = seed
    distiller = ds.get_distiller("amed", **options)
    model_options = parse_pairs(model_opt, "--model-opt")
    net = ds.get_model(model, **model_options)
    if hasattr(net, "to"):
        net.to(device)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"), disable=as_json, transient=False,
    )
    task = None
    last: dict[str, float] = {}

    def report(event: Any) -> None:
        nonlocal task
        total = int(event["iterations"]) * int(event["steps"])
        done = int(event["iteration"]) * int(event["steps"]) + int(event["step"]) + 1
        if task is None:
            task = progress.add_task("AMED training", total=total, stats="")
        stats = (f"step {int(event['step'])} loss {event['loss']:.4f} "
                 f"r {event['r_mean']:.3f}±{event['r_std']:.3f} "
                 f"dir {event['scale_dir_mean']:.4f}±{event['scale_dir_std']:.4f} "
                 f"time {event['scale_time_mean']:.4f}±{event['scale_time_std']:.4f}")
        progress.update(task, completed=done, stats=stats)
        last.update({f"step{int(event['step'])}_{k}": float(v) for k, v in event.items()
                     if k in ("loss", "r_mean", "r_std", "scale_dir_mean", "scale_time_mean")})

    t0 = time.perf_counter()
    with progress, stop_between_steps(show=True) as interruption:
        predictor = distiller.distill(net, progress=report, model_name=model, model_options=model_options,
                                      device=device, stop=interruption.requested)
    seconds = time.perf_counter() - t0
    done, planned = predictor.settings["iterations"], predictor.settings["iterations_planned"]
    if interruption.signum is not None and done < planned:
        # an interrupted run never replaces a predictor that was there before it
        target = out.with_name(f"{out.stem}-interrupted{out.suffix}") if existed else out
        if done:
            predictor.save(target)
        kept = (f"the predictor trained so far was written to {target}"
                + (f" ({out} is kept: it was there before)" if existed else "") if done else "nothing was trained yet")
        err_console.print(escape(f"interrupted at iteration {done}/{planned}; {kept}; rerun the same "
                                 "command to train it fully"), highlight=False, soft_wrap=True)
        raise typer.Exit(128 + interruption.signum)
    predictor.save(out)
    name = "amed" if solver == "amed" else f"amed-{solver}"
    nfe_run = 2 * (num_steps - 1) - int(afs)
    used = str(predictor.settings["labels"])
    hint = usage_hint(model, model_options, name, out, schedule, num_steps, afs=afs, labels=used,
                      schedule_options=predictor.settings.get("schedule_options", {}))
    summary = {"file": str(out), "solver": name, "num_steps": num_steps, "nfe": nfe_run, "afs": afs,
               "labels": used, "seconds": seconds, "iterations": predictor.settings["iterations"],
               "last": last, "command": hint.removeprefix("use: ")}
    if as_json:
        print_json(summary)
        return
    console.print(f"wrote {out} ({seconds:.1f} s, {summary['iterations']} iterations)", highlight=False)
    console.print(escape(hint),
                  highlight=False, soft_wrap=True)


def usage_hint(model: str, model_options: dict[str, Any], solver: str, out: Path, schedule: str,
               num_steps: int, *, afs: bool, labels: str = "none", schedule_options: dict[str, Any] | None = None) -> str:
    """The ``diffsampler sample`` command that samples with a trained predictor as it was trained
    (with the training's labels choice, if any)."""
    from shlex import quote

    from .solver import schedule_flags

    flags = [f"--model {quote(model)}", *(f"--model-opt {quote(f'{k}={v}')}" for k, v in model_options.items()),
             f"--solver {solver}", f"--opt {quote(f'predictor={out}')}", schedule_flags(schedule, schedule_options or {}),
             f"--steps {num_steps}"]
    if labels not in ("none", "cond"):
        flags.append(f"--labels {quote(labels)}")
    return "use: diffsampler sample " + " ".join(flags) + (" --afs" if afs else "")


def add_commands(app: typer.Typer) -> None:
    """Add ``diffsampler amed ...`` to the app."""
    amed_app = typer.Typer(help="AMED: train learned intermediate steps (Zhou et al. CVPR 2024).",
                           no_args_is_help=True)
    amed_app.command("train")(train)
    app.add_typer(amed_app, name="amed")
