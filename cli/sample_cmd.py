"""``diffsampler sample``: sample a set of seeds and write a grid, the samples and the config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from diffsampler.devices import resolve_device
from diffsampler.distributed import barrier, device_for_rank, on_main_first, shard
from diffsampler.errors import OptionError
from diffsampler.seeds import parse_seeds
from diffsampler.sigmas import parse_sigma_list

from ._common import err_console, exit_status, parse_pairs, print_json, sigterm_interrupts

# Typed flags for the options of the built-in solvers; any other option goes through --opt.
_SOLVER_FLAGS = ("max_order", "predict_x0", "lower_order_final", "variant", "deis_mode", "r",
                 "thresholding")


def _say(text: str) -> None:
    """One status line on stderr, never wrapped (scripts and logs grep for it)."""
    err_console.print(text, soft_wrap=True)


def _output_format(fmt: str | None, grid: bool) -> str:
    if grid and fmt not in (None, "grid"):
        raise OptionError(f"--grid writes only a grid image: drop --format {fmt} or --grid")
    return "grid" if grid else fmt or "npz"


def _check_sigmas_alone(sigmas: str | None, **given: Any) -> None:
    """--sigmas fixes the noise levels: refuse the flags that would choose them otherwise."""
    if sigmas is None:
        return
    clash = [f"--{name.replace('_', '-')}" for name, value in given.items() if value]
    if clash:
        raise OptionError(f"--sigmas gives the noise levels itself: drop {', '.join(clash)}")


def sample(
    model: Annotated[str, typer.Option(help="registered model name or model file")] = "gmm",
    solver: Annotated[
        str | None, typer.Option(help="registered solver name (default: the model's own, else euler)")
    ] = None,
    schedule: Annotated[
        str | None, typer.Option(help="registered schedule (default: the solver's recommended one)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="number of sigmas (steps + 1)")] = None,
    nfe: Annotated[
        int | None, typer.Option(help="denoiser evaluations per sample (default: the model's own, else 10)")
    ] = None,
    sigmas: Annotated[
        str | None, typer.Option(help="explicit decreasing sigmas, e.g. 80,10,1,0.1,0.002")
    ] = None,
    seeds: Annotated[str, typer.Option(help="seeds, e.g. 0-63,100")] = "0-63",
    batch: Annotated[int, typer.Option(help="samples per batch")] = 64,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("samples"),
    afs: Annotated[
        bool | None, typer.Option("--afs/--no-afs", help="analytical first step (saves one NFE; default: the model's choice, else off)")
    ] = None,
    denoise_to_zero: Annotated[bool, typer.Option(help="final denoising step (+1 NFE)")] = False,
    max_order: Annotated[int | None, typer.Option(help="solver option max_order")] = None,
    predict_x0: Annotated[bool | None, typer.Option(help="solver option predict_x0")] = None,
    lower_order_final: Annotated[
        bool | None, typer.Option(help="solver option lower_order_final")
    ] = None,
    variant: Annotated[str | None, typer.Option(help="solver option variant (unipc)")] = None,
    deis_mode: Annotated[str | None, typer.Option(help="solver option deis_mode")] = None,
    r: Annotated[float | None, typer.Option("--r", help="solver option r (dpm)")] = None,
    thresholding: Annotated[
        str | None, typer.Option(help="solver option thresholding (dpmpp, unipc)")
    ] = None,
    rho: Annotated[float | None, typer.Option(help="schedule option rho")] = None,
    opt: Annotated[
        list[str] | None, typer.Option("--opt", help="any solver option, key=value (repeatable)")
    ] = None,
    schedule_opt: Annotated[
        list[str] | None, typer.Option("--schedule-opt", help="schedule option key=value")
    ] = None,
    model_opt: Annotated[
        list[str] | None, typer.Option("--model-opt", help="model option key=value")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="class-conditional models: 'random' (per seed), 'seed' (seed mod classes: the seed-th prompt), or a class index")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="neural models: fp32 (exact), tf32, fp16 or bf16 (model option precision)")
    ] = None,
    channels_last: Annotated[
        bool, typer.Option("--channels-last", help="neural models: channels-last memory format")
    ] = False,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="run the model through torch.compile (first batch compiles)")
    ] = False,
    cuda_graph: Annotated[
        bool, typer.Option("--cuda-graph", help="capture each batch size's whole run in one CUDA graph (CUDA)")
    ] = False,
    cudnn_benchmark: Annotated[
        bool, typer.Option("--cudnn-benchmark", help="let cuDNN time its convolution algorithms (faster; "
                                                     "GPU results then not bit-reproducible)")
    ] = False,
    dtype: Annotated[
        str, typer.Option(help="float32, float64, or half precision float16 or bfloat16 (neural "
                               "models; may overflow)")
    ] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or auto")] = "auto",
    fmt: Annotated[
        str | None, typer.Option("--format", help="npz (default), png (EDM folder layout), zip, or grid")
    ] = None,
    grid: Annotated[bool, typer.Option("--grid", help="write only a grid image")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the run summary as JSON")] = False,
) -> None:
    """Sample SEEDS with a model, a solver and a schedule; resumable, torchrun-aware.

    Writes config.json and the samples in --format (npz, png, zip, grid); npz and zip runs of
    images also write a preview grid.png (a PNG folder gets none: FID tools would count it).
    Rerunning the same command completes an interrupted run; under torchrun the batches are
    shared among the processes and the result is the same as in one process.
    """
    from diffsampler.distributed import setup, teardown
    from diffsampler.runs import RunConfig

    typed = dict(max_order=max_order, predict_x0=predict_x0, lower_order_final=lower_order_final,
                 variant=variant, deis_mode=deis_mode, r=r, thresholding=thresholding)
    solver_options: dict[str, Any] = {k: v for k, v in typed.items() if v is not None}
    solver_options.update(parse_pairs(opt, "--opt"))
    schedule_options: dict[str, Any] = parse_pairs(schedule_opt, "--schedule-opt")
    if rho is not None:
        schedule_options["rho"] = rho
    if sigmas is not None and (steps is not None or nfe is not None):
        raise OptionError("give --sigmas, or --steps/--nfe, not both")
    _check_sigmas_alone(sigmas, schedule=schedule is not None, rho=rho is not None, schedule_opt=schedule_opt)
    fmt = _output_format(fmt, grid)
    model_options: dict[str, Any] = parse_pairs(model_opt, "--model-opt")
    if precision is not None:
        model_options["precision"] = precision
    if channels_last:
        model_options["channels_last"] = "true"
    config = RunConfig(
        model=model, model_options=model_options, compile=compile_model, cuda_graph=cuda_graph,
        cudnn_benchmark=cudnn_benchmark,
        solver=solver, solver_options=solver_options,
        schedule=schedule, schedule_options=schedule_options,
        num_steps=steps, nfe=nfe, sigmas=parse_sigma_list(sigmas) if sigmas else None,
        afs=afs, denoise_to_zero=denoise_to_zero, seeds=parse_seeds(seeds), batch=batch,
        dtype=dtype, device=resolve_device(device), labels=labels,
    )
    dist = setup(config.device)
    try:
        with sigterm_interrupts():
            _run(config, out, fmt, dist, as_json=as_json, requested_nfe=nfe)
    except KeyboardInterrupt as exc:  # before sampling started (the sampling loop reports its own)
        if dist.is_main:
            _say("[bold red]interrupted[/] before sampling started")
        raise typer.Exit(exit_status(exc)) from None
    finally:
        teardown()


def _run(config: Any, out: Path, fmt: str, dist: Any, *, as_json: bool,
         requested_nfe: int | None) -> None:
    from diffsampler.outputs import RunDirectory
    from diffsampler.runs import plan_run

    plan = plan_run(config)
    if requested_nfe is not None and plan.nfe != requested_nfe:  # resolve_num_steps is exact
        raise OptionError(f"NFE {requested_nfe} requested, the plan spends {plan.nfe}")
    rundir = RunDirectory(out, fmt, plan.model.shape)
    record = plan.record()
    shown = escape(str(out))
    def prepare_on_main() -> bool:
        resuming = rundir.prepare(record, main=True)
        rundir.remove_stale_temporaries()
        missing = rundir.reopen(plan.batches)
        if rundir.replaced:
            _say(f"{shown} held a run that left no sample ({escape('; '.join(rundir.replaced[:3]))}): "
                 "it now takes this configuration")
        if missing:
            _say(f"{shown} held this run, complete, but lost {escape(', '.join(missing))} since: "
                 "sampling again what is missing")
        return resuming

    # rank 0 checks and prepares the directory; a refusal there stops every rank cleanly
    resuming = bool(on_main_first(prepare_on_main))
    if not dist.is_main:
        resuming = rundir.prepare(record, main=False)
    if rundir.complete(plan.batches):
        if dist.is_main:
            _say(f"nothing to do: {shown} already holds this run, complete")
            if as_json:
                print_json({"out": str(out), **rundir.summary(), "processes": dist.world_size,
                            "already_complete": True})
        return
    done_before = rundir.count_done(plan.batches) if dist.is_main else 0
    started = time.perf_counter()
    try:
        _sample_and_finish(plan, rundir, out, dist, as_json=as_json, resuming=resuming,
                           done_before=done_before)
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM; finished batches are on disk
        if dist.is_main:
            kept = rundir.count_done(plan.batches)
            rundir.record_invocation(time.perf_counter() - started, kept - done_before, interrupted=True)
            _say(f"[bold red]interrupted:[/] {kept} of {len(plan.batches)} batches kept in "
                 f"{shown}; rerun the same command to resume")
        raise typer.Exit(exit_status(exc)) from None


def _header(plan: Any, out: Path, dist: Any, *, skipped: int, mine: int, resuming: bool) -> str:
    """The one line that says what is sampled, where, and how much was done already."""
    config = plan.config
    steps = len(plan.sigmas) - 1
    line = (
        f"[bold]{escape(str(config.solver))}[/] on [bold]{escape(config.model)}[/], schedule "
        f"{escape(plan.schedule)}, {steps} step{'s' if steps != 1 else ''}, NFE {plan.nfe}"
    )
    if plan.evaluation_cost != 1:
        line += (f" ({plan.nfe * plan.evaluation_cost} counting each guided evaluation as "
                 f"{plan.evaluation_cost}, as the seed does)")
    line += f", {len(config.seeds)} seeds, {dist.world_size} process(es) -> {escape(str(out))}"
    if resuming:
        whose = "" if dist.world_size == 1 else "this rank's "
        line += f" (resuming: {skipped} of {whose}{mine} batches already done)"
    return line


def _sample_and_finish(plan: Any, rundir: Any, out: Path, dist: Any, *, as_json: bool,
                       resuming: bool, done_before: int) -> None:
    from diffsampler.runs import execute, seed_labels

    config = plan.config
    # Shard all batches first, then skip the finished ones: every rank sees the same shards
    # whatever the others have written meanwhile.
    shard_batches = shard(plan.batches, dist)
    mine = rundir.pending(shard_batches)
    if dist.is_main:
        _say(_header(plan, out, dist, skipped=len(shard_batches) - len(mine),
                     mine=len(shard_batches), resuming=resuming))
    started = time.perf_counter()
    progress = Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, transient=True,
                        disable=not dist.is_main or not err_console.is_terminal)  # no stray newline in logs
    with progress:
        task = progress.add_task("batches", total=len(mine))

        def keep(batch: Any, x: Any) -> None:
            rundir.write(batch, x.numpy())
            progress.advance(task)

        # execute hands every batch finished before an interruption to keep() before it returns
        execute(plan, batches=mine, on_batch=keep, device=device_for_rank(config.device, dist))
    elapsed = time.perf_counter() - started
    barrier()  # every rank's batches are on disk

    def finish() -> list[str]:
        per_seed = seed_labels(plan, config.seeds)
        rundir.record_invocation(elapsed, len(plan.batches) - done_before, interrupted=False)
        return list(rundir.finish(plan.batches, {},
                                  labels=None if per_seed is None else dict(zip(config.seeds, per_seed, strict=True))))

    # rank 0 assembles the outputs while the others wait, so that no rank leaves the group early
    written = on_main_first(finish)
    if not dist.is_main or written is None:
        return
    summary = {"out": str(out), "files": written, "nfe": plan.nfe, "seconds": rundir.summary()["seconds"],
               "session_seconds": round(elapsed, 3), "samples": len(config.seeds), "processes": dist.world_size}
    if as_json:
        print_json(summary)
    else:
        _say(f"wrote {escape(', '.join(written))} in {elapsed:.2f} s")
