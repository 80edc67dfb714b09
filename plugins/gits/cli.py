"""``diffsampler gits search``: search a GITS schedule and write it (added by ``register_commands``).

Torch and the search are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["add_commands", "search", "usage_hint"]


def _coeffs(text: str) -> list[float]:
    """``1.15`` or ``1.1,1.15,1.2``: positive numbers, no empty item."""
    from diffsampler.errors import OptionError

    items = [t.strip() for t in text.split(",")]
    if "" in items:
        raise OptionError(f"--coeff has an empty item in {text!r}; expected e.g. 1.15 or 1.1,1.15,1.2")
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise OptionError(f"--coeff expects numbers like 1.15 or 1.1,1.15,1.2, got {text!r}") from None
    if any(not v > 0 for v in values):
        raise OptionError(f"--coeff expects positive numbers, got {text!r}")
    return values


def out_paths(out: Path, coeffs: list[float]) -> list[Path]:
    """One file per coefficient: ``FILE`` for one, ``STEM-coeff1.15.json``-style for several."""
    if len(coeffs) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-coeff{c:g}{out.suffix or '.json'}") for c in coeffs]


def search(
    out: Annotated[Path, typer.Option(help="schedule file to write (JSON)")] = Path("gits.json"),
    model: Annotated[str, typer.Option(help="registered model name or model file")] = "gmm",
    model_opt: Annotated[list[str] | None, typer.Option("--model-opt", help="model option key=value")] = None,
    solver: Annotated[str, typer.Option(help="student solver (sets --nfe's steps and the AFS search)")] = "ipndm",
    opt: Annotated[list[str] | None, typer.Option("--opt", help="student solver option key=value")] = None,
    steps: Annotated[int | None, typer.Option(
        help="sigmas of the schedule (steps + 1), without the AFS point; default 7, the seed's (ipndm: NFE 6)",
        show_default=False)] = None,
    nfe: Annotated[int | None, typer.Option(help="NFE of the student solver with the schedule (instead of --steps)",
                                            show_default=False)] = None,
    afs: Annotated[bool, typer.Option(help="search a free first step (sample with --afs)")] = False,
    teacher: Annotated[str, typer.Option(help="teacher solver")] = "ipndm",
    teacher_opt: Annotated[list[str] | None, typer.Option("--teacher-opt", help="teacher solver option key=value")] = None,
    teacher_steps: Annotated[int, typer.Option(help="teacher time points (seed README: 61)")] = 61,
    teacher_schedule: Annotated[str, typer.Option(help="teacher grid schedule")] = "polynomial",
    teacher_rho: Annotated[float, typer.Option(help="teacher grid rho")] = 7.0,
    metric: Annotated[str, typer.Option(help="cost: dev, l1 or l2")] = "dev",
    coeff: Annotated[str, typer.Option(help="DP coefficient(s), e.g. 1.15 or 1.1,1.15,1.2 (one file each)")] = "1.15",
    num_warmup: Annotated[int, typer.Option(help="teacher trajectories")] = 256,
    batch: Annotated[int, typer.Option(help="trajectories per batch (memory bound)")] = 64,
    seed: Annotated[int | None, typer.Option(help="first warm-up seed")] = None,
    labels: Annotated[str, typer.Option(
        help="class labels of the trajectories: none, random (per seed), seed (seed mod classes) or a class "
             "index; auto: random for a class-conditional model, as the seed, else none")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Search a GITS time schedule for a model (Chen et al. ICML 2024) and write it as JSON.

    Use it with any solver: diffsampler sample --schedule gits --schedule-opt file=FILE --steps N.
    Runs under torchrun: the trajectories are shared among the processes.
    """
    import diffsampler as ds
    from diffsampler.devices import resolve_device
    from diffsampler.distributed import setup, teardown
    from diffsampler.errors import OptionError
    from diffsampler.options import parse_pairs
    from diffsampler.outputs import check_output_file

    from .options import GITSOptions

    if steps is not None and nfe is not None:
        raise OptionError("give --steps or --nfe, not both")
    coeffs = _coeffs(coeff)
    for path in out_paths(out, coeffs):  # before any work: a search is not lost to a bad --out
        check_output_file(path)
    device = resolve_device(device)
    solver_options = parse_pairs(opt, "--opt")
    student = ds.get_solver(solver, **solver_options)
    if nfe is not None:
        # with AFS the DP chooses one point fewer; the free first step restores the count
        steps = ds.resolve_num_steps(student, nfe=nfe, afs=afs) - int(afs)
    elif steps is None:
        steps = GITSOptions().num_steps  # the seed's default, as the distiller's
    model_options = parse_pairs(model_opt, "--model-opt")
    options: dict[str, Any] = dict(
        num_steps=steps, coeff=coeffs[0], metric=metric, num_warmup=num_warmup, teacher=teacher,
        teacher_options=",".join(f"{k}={v}" for k, v in parse_pairs(teacher_opt, "--teacher-opt").items()),
        teacher_steps=teacher_steps, teacher_schedule=teacher_schedule, teacher_rho=teacher_rho,
        afs=afs, solver=solver, solver_options=",".join(f"{k}={v}" for k, v in solver_options.items()),
        batch=batch, dtype=dtype, device=device, labels=labels,
    )
    if seed is not None:
        options["seed"] = seed
    distiller = ds.get_distiller("gits", **options)
    setup(device)
    try:
        _search(distiller, model, model_options, coeffs, out, student, as_json=as_json)
    finally:
        teardown()


def _search(distiller: Any, model_name: str, model_options: dict[str, Any], coeffs: list[float],
            out: Path, student: Any, *, as_json: bool) -> None:
    import time

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import diffsampler as ds
    from diffsampler.cli._common import console, print_json
    from diffsampler.distributed import current, on_main_first

    from .search import STAGES

    main = current().is_main
    model = ds.get_model(model_name, **model_options)
    info = {"name": model_name, "options": model_options}
    o = distiller.options
    labels = {"teacher": "teacher trajectories", "cost": "cost matrix", "dp": "dynamic programming",
              "afs": "AFS step"}
    progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not main or as_json, transient=False)
    tasks: dict[int, Any] = {}

    def report(event: Any) -> None:
        stage = int(event["stage"])
        if stage not in tasks:
            tasks[stage] = progress.add_task(labels[STAGES[stage]], total=event["total"])
        progress.update(tasks[stage], completed=event["done"], total=event["total"])

    t0 = time.perf_counter()
    with progress:
        result = distiller.search(model, progress=report, model_info=info)
        schedules = [distiller.schedule(result, teacher=model, coeff=c, progress=report) for c in coeffs]
    seconds = time.perf_counter() - t0
    paths = out_paths(out, coeffs)
    # rank 0 writes while the others wait (no rank leaves the process group early)
    on_main_first(lambda: [sched.save(path) for sched, path in zip(schedules, paths, strict=True)])
    sample_nfe = student.nfe(len(schedules[0].sigmas), afs=o.afs)
    summary = {
        "files": [str(p) for p in paths],
        "num_steps": len(schedules[0].sigmas),
        "nfe": sample_nfe,
        "afs": o.afs,
        "schedules": [
            {"coeff": s.settings["coeff"], "sigmas": list(s.sigmas), "indices": list(s.indices),
             "dp_objective": s.costs["dp_objective"]}
            for s in schedules
        ],
        "seconds": {
            "teacher": result.seconds["teacher"], "cost_matrix": result.seconds["cost"],
            "dp": sum(s.costs["dp_seconds"] for s in schedules),
            "afs": sum(s.costs.get("afs_seconds", 0.0) for s in schedules),
            "total": seconds,
        },
        "teacher_nfe": result.teacher_nfe * o.num_warmup,
        "labels": result.labels,
        "command": usage_hint(model_name, model_options, o.solver, o.solver_options, paths[0],
                              len(schedules[0].sigmas), afs=o.afs, labels=result.labels).removeprefix("use: "),
    }
    if not main:
        return
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"GITS schedule(s) for {model_name} ({student!r}, NFE {sample_nfe}"
                  + (", AFS" if o.afs else "") + ")", title_justify="left")
    for col in ("coeff", "sigmas", "file"):
        table.add_column(col, overflow="fold")
    for s, path in zip(summary["schedules"], paths, strict=True):
        table.add_row(f"{s['coeff']:g}", ", ".join(f"{v:.4g}" for v in s["sigmas"]), str(path))
    console.print(table)
    cost = Table(title="cost of each phase", title_justify="left")
    cost.add_column("phase")
    cost.add_column("seconds", justify="right")
    cost.add_column("work", overflow="fold")
    sec = summary["seconds"]
    cost.add_row("teacher trajectories", f"{sec['teacher']:.3f}",
                 f"{o.num_warmup} x {result.teacher_nfe} NFE ({o.teacher}, {o.teacher_steps} points)")
    cost.add_row("cost matrix", f"{sec['cost_matrix']:.3f}", f"{o.teacher_steps}x{o.teacher_steps}, metric {o.metric}")
    cost.add_row("dynamic programming", f"{sec['dp']:.4f}", f"{len(coeffs)} coefficient(s)")
    if o.afs:
        cost.add_row("AFS step", f"{sec['afs']:.3f}", "student runs over the warm-up seeds")
    cost.add_row("total", f"{sec['total']:.3f}", "")
    console.print(cost)
    console.print(escape(usage_hint(model_name, model_options, o.solver, o.solver_options, paths[0],
                                    summary["num_steps"], afs=o.afs, labels=result.labels)),
                  highlight=False, soft_wrap=True)


def usage_hint(model: str, model_options: dict[str, Any], solver: str, solver_options: str,
               path: Path, num_steps: int, *, afs: bool, labels: str = "none") -> str:
    """The ``diffsampler sample`` command that samples with a searched file as it was searched
    (with the search's labels choice, if any)."""
    from shlex import quote

    flags = [f"--model {quote(model)}", *(f"--model-opt {quote(f'{k}={v}')}" for k, v in model_options.items()),
             f"--solver {quote(solver)}",
             *(f"--opt {quote(kv.strip())}" for kv in solver_options.split(",") if kv.strip()),
             f"--schedule gits --schedule-opt {quote(f'file={path}')} --steps {num_steps}"]
    if labels not in ("none", "cond"):
        flags.append(f"--labels {quote(labels)}")
    return "use: diffsampler sample " + " ".join(flags) + (" --afs" if afs else "")


def add_commands(app: typer.Typer) -> None:
    """Add ``diffsampler gits ...`` to the app."""
    gits_app = typer.Typer(help="GITS: search time schedules (Chen et al. ICML 2024).", no_args_is_help=True)
    gits_app.command("search")(search)
    app.add_typer(gits_app, name="gits")
