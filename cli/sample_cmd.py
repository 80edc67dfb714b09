"""``diffsampler sample``: sample a set of seeds and write a grid, the samples and the config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from diffsampler.errors import OptionError
from diffsampler.images import is_image_shape, make_grid, to_uint8, write_png
from diffsampler.seeds import parse_seeds
from diffsampler.sigmas import parse_sigma_list
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._common import err_console, parse_pairs, print_json

# Typed flags for the options of the built-in solvers; any other option goes through --opt.
_SOLVER_FLAGS = ("max_order", "predict_x0", "lower_order_final", "variant", "deis_mode", "r",
                 "thresholding")

Opt = Optional


def _prepare_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OptionError(f"cannot write to output directory {str(out)!r}: {exc.strerror}") from None


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sample(
    model: Annotated[str, typer.Option(help="registered model name or model file")] = "gmm",
    solver: Annotated[str, typer.Option(help="registered solver name")] = "euler",
    schedule: Annotated[
        Opt[str], typer.Option(help="registered schedule (default: the solver's recommended one)")
    ] = None,
    steps: Annotated[Opt[int], typer.Option(help="number of sigmas (steps + 1)")] = None,
    nfe: Annotated[Opt[int], typer.Option(help="denoiser evaluations per sample")] = None,
    sigmas: Annotated[
        Opt[str], typer.Option(help="explicit decreasing sigmas, e.g. 80,10,1,0.1,0.002")
    ] = None,
    seeds: Annotated[str, typer.Option(help="seeds, e.g. 0-63,100")] = "0-63",
    batch: Annotated[int, typer.Option(help="samples per batch")] = 64,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("samples"),
    afs: Annotated[bool, typer.Option(help="analytical first step (saves one NFE)")] = False,
    denoise_to_zero: Annotated[bool, typer.Option(help="final denoising step (+1 NFE)")] = False,
    max_order: Annotated[Opt[int], typer.Option(help="solver option max_order")] = None,
    predict_x0: Annotated[Opt[bool], typer.Option(help="solver option predict_x0")] = None,
    lower_order_final: Annotated[
        Opt[bool], typer.Option(help="solver option lower_order_final")
    ] = None,
    variant: Annotated[Opt[str], typer.Option(help="solver option variant (unipc)")] = None,
    deis_mode: Annotated[Opt[str], typer.Option(help="solver option deis_mode")] = None,
    r: Annotated[Opt[float], typer.Option("--r", help="solver option r (dpm)")] = None,
    thresholding: Annotated[
        Opt[str], typer.Option(help="solver option thresholding (dpmpp, unipc)")
    ] = None,
    rho: Annotated[Opt[float], typer.Option(help="schedule option rho")] = None,
    opt: Annotated[
        Opt[list[str]], typer.Option("--opt", help="any solver option, key=value (repeatable)")
    ] = None,
    schedule_opt: Annotated[
        Opt[list[str]], typer.Option("--schedule-opt", help="schedule option key=value")
    ] = None,
    model_opt: Annotated[
        Opt[list[str]], typer.Option("--model-opt", help="model option key=value")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or auto")] = "auto",
    grid: Annotated[bool, typer.Option(help="write grid.png")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the run summary as JSON")] = False,
) -> None:
    """Sample SEEDS with a model, a solver and a schedule; write grid.png, samples.npz, config.json."""
    from diffsampler.runs import RunConfig, execute, plan_run

    typed = dict(max_order=max_order, predict_x0=predict_x0, lower_order_final=lower_order_final,
                 variant=variant, deis_mode=deis_mode, r=r, thresholding=thresholding)
    solver_options: dict[str, Any] = {k: v for k, v in typed.items() if v is not None}
    solver_options.update(parse_pairs(opt, "--opt"))
    schedule_options: dict[str, Any] = parse_pairs(schedule_opt, "--schedule-opt")
    if rho is not None:
        schedule_options["rho"] = rho
    if sigmas is not None and (steps is not None or nfe is not None):
        raise OptionError("give --sigmas, or --steps/--nfe, not both")
    if sigmas is None and steps is None and nfe is None:
        nfe = 10
    config = RunConfig(
        model=model, model_options=parse_pairs(model_opt, "--model-opt"),
        solver=solver, solver_options=solver_options,
        schedule=schedule, schedule_options=schedule_options,
        num_steps=steps, nfe=nfe, sigmas=parse_sigma_list(sigmas) if sigmas else None,
        afs=afs, denoise_to_zero=denoise_to_zero, seeds=parse_seeds(seeds), batch=batch,
        dtype=dtype, device=_device(device),
    )
    plan = plan_run(config)
    if nfe is not None and plan.nfe != nfe:  # cannot happen: resolve_num_steps is exact
        raise OptionError(f"NFE {nfe} requested, the plan spends {plan.nfe}")
    _prepare_out_dir(out)
    record = plan.record()
    err_console.print(
        f"[bold]{plan.config.solver}[/] on [bold]{plan.config.model}[/], schedule "
        f"{plan.schedule}, {len(plan.sigmas) - 1} steps, NFE {plan.nfe}, "
        f"{len(config.seeds)} seeds -> {out}"
    )

    done: list[tuple[tuple[int, ...], np.ndarray]] = []
    started = time.perf_counter()

    def keep(batch_: Any, x: Any) -> None:
        done.append((batch_.seeds, x.numpy()))
        progress.advance(task)

    progress = Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, transient=True)
    failure: BaseException | None = None
    with progress:
        task = progress.add_task("batches", total=len(plan.batches))
        try:
            execute(plan, on_batch=keep)
        except BaseException as exc:  # keep what finished, then report
            failure = exc
    elapsed = time.perf_counter() - started
    record["seconds"] = round(elapsed, 3)
    record["complete"] = failure is None
    written = _write_outputs(out, done, record, grid=grid)
    if failure is not None:
        if done:
            err_console.print(f"kept {sum(len(s) for s, _ in done)} finished samples in {out}")
        raise failure
    summary = {"out": str(out), "files": written, "nfe": plan.nfe, "seconds": record["seconds"],
               "samples": len(config.seeds)}
    if as_json:
        print_json(summary)
    else:
        err_console.print(f"wrote {', '.join(written)} in {elapsed:.2f} s")


def _write_outputs(out: Path, done: list[tuple[tuple[int, ...], np.ndarray]],
                   record: dict[str, Any], *, grid: bool) -> list[str]:
    written = []
    if done:
        seeds = np.array([s for batch, _ in done for s in batch], dtype=np.int64)
        x = np.concatenate([arr for _, arr in done])
        tmp = out / "samples.tmp.npz"
        np.savez(tmp, samples=x, seeds=seeds)
        os.replace(tmp, out / "samples.npz")
        written.append("samples.npz")
        if grid and is_image_shape(tuple(x.shape[1:])):
            write_png(out / "grid.png", make_grid(to_uint8(x)))
            written.append("grid.png")
    (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    written.append("config.json")
    return written
