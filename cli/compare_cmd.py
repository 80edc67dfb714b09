"""``diffsampler compare``: the seed's quality-per-NFE table, exact on analytic models."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from diffsampler import jsontext
from diffsampler.errors import MissingExtraError, OptionError
from diffsampler.outputs import atomic_write_bytes
from diffsampler.seeds import parse_seeds

from ._common import (
    console,
    err_console,
    exit_status,
    parse_pairs,
    print_json,
    sigterm_interrupts,
    table_console,
)


def compare(
    model: Annotated[str, typer.Option(help="registered model or model file")] = "gmm",
    solver: Annotated[
        list[str] | None,
        typer.Option(help="row spec NAME\\[key=value,...]\\[@SCHEDULE\\[key=value]] (repeatable; "
                          "default: the seed's eight solvers)"),
    ] = None,
    schedule: Annotated[
        list[str] | None, typer.Option(help="run every solver with each of these schedules")
    ] = None,
    nfe: Annotated[str, typer.Option(help="NFEs, e.g. 3-10 or 4,6,8")] = "3-10",
    seeds: Annotated[str, typer.Option(help="seeds, e.g. 0-63")] = "0-63",
    metric: Annotated[
        list[str] | None,
        typer.Option(help="metric NAME or NAME\\[key=value,...], e.g. fid\\[ref=stats.npz] "
                          "(repeatable; default on analytic models: l2-exact, fd-exact)"),
    ] = None,
    model_opt: Annotated[list[str] | None, typer.Option("--model-opt", help="model option key=value")] = None,
    afs: Annotated[bool, typer.Option(help="analytical first step in every run")] = False,
    dtype: Annotated[str, typer.Option(help="float64 (default) or float32")] = "float64",
    batch: Annotated[int, typer.Option(help="samples per batch")] = 64,
    labels: Annotated[
        str | None,
        typer.Option(help="class (or prompt) of each seed, as in sample: random, seed, or a class index "
                          "(default: the model's own)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="directory for results.json/.csv, plot.png")] = Path("compare"),
    config: Annotated[
        Path | None, typer.Option(help="rerun the comparison saved in a results.json (no other flags but --out/--json)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Compare solvers (rows) over NFEs (columns) on one model and one set of seeds.

    On analytic models the cells are the mean RMS error to the exact ODE endpoint and the Frechet
    distance to the true data moments; the best per column is marked.
    """
    from diffsampler.compare import CompareConfig, CompareInterrupted, parse_nfes, run_compare

    if config is not None:
        flags = {"--model": (model, "gmm"), "--solver": (solver, None), "--schedule": (schedule, None),
                 "--nfe": (nfe, "3-10"), "--seeds": (seeds, "0-63"), "--metric": (metric, None),
                 "--model-opt": (model_opt, None), "--afs": (afs, False), "--dtype": (dtype, "float64"),
                 "--batch": (batch, 64), "--labels": (labels, None)}
        given = [flag for flag, (value, default) in flags.items() if value not in (default, [])]
        if given:
            raise OptionError(f"--config reruns a saved comparison as it was; drop {', '.join(given)}")
        cfg = CompareConfig.from_dict(_read_config(config))
    else:
        kwargs: dict[str, Any] = {}
        if solver:
            kwargs["solvers"] = solver
        cfg = CompareConfig(
            model=model, model_options=parse_pairs(model_opt, "--model-opt"),
            schedules=tuple(schedule or ()), nfes=parse_nfes(nfe), seeds=parse_seeds(seeds),
            metrics=tuple(metric or ()), afs=afs, dtype=dtype, batch=batch, labels=labels, **kwargs,
        )
    _prepare(out)
    finished, higher = _interrupted_cells(out, cfg)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, transient=True,
                        disable=not err_console.is_terminal)  # a transient bar in a log is one stray newline
    try:
        with progress, sigterm_interrupts():
            task = progress.add_task("ground truth and cells", total=None)
            result = run_compare(
                cfg,
                on_start=lambda n: progress.update(task, total=n, description="cells"),
                on_cell=lambda cell: progress.advance(task),
                finished=finished, finished_higher=higher,
            )
    except CompareInterrupted as stop:
        done = sum(c.values is not None for c in stop.partial.cells)
        _write(out, stop.partial)
        err_console.print(escape(
            f"interrupted: the {done} finished cells are in {out / 'results.json'} (marked incomplete); "
            "the same command resumes from them"
        ))
        raise typer.Exit(exit_status(stop)) from None
    except KeyboardInterrupt as stop:  # while loading the model or computing the ground truth
        err_console.print("interrupted before the first cell: nothing written")
        raise typer.Exit(exit_status(stop)) from None
    files = _write(out, result)
    if as_json:
        print_json(result.to_dict())
        return
    wide = table_console()
    for key in result.keys():
        wide.print(_table(result, key))
    if result.ground_truth_accuracy is not None:
        console.print(
            f"exact endpoints: DOP853 rtol 1e-10 (agrees with rtol 1e-8 to "
            f"{result.ground_truth_accuracy:.1e}); {len(cfg.seeds)} seeds; "
            f"'exact' row = the metric of the exact endpoints themselves"
        )
    err_console.print(escape(f"{result.seconds:.1f} s; wrote {', '.join(files)} in {out}"))


def _interrupted_cells(out: Path, cfg: Any) -> tuple[list[Any], list[str]]:
    """The finished cells of an interrupted run of the same comparison in ``out`` (kept, not
    measured again) and its higher-is-better keys; none for any other results.json."""
    from diffsampler.compare import finished_cells

    try:
        saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [], []
    if not isinstance(saved, dict):
        return [], []
    cells = finished_cells(saved, cfg)
    if cells:
        err_console.print(escape(f"resuming the interrupted comparison in {out}: {len(cells)} finished "
                                 "cells kept from results.json"))
    higher = saved.get("higher_is_better")
    return cells, [str(k) for k in higher] if cells and isinstance(higher, list) else []


def _read_config(path: Path) -> dict[str, Any]:
    """The configuration in a ``results.json`` written by ``compare`` (or the bare config)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OptionError(f"cannot read comparison configuration {str(path)!r}: {exc}") from None
    config = data.get("config", data) if isinstance(data, dict) else None
    if isinstance(config, dict) and {"solvers", "nfes"} <= set(config):
        return dict(config)
    raise OptionError(f"{str(path)!r} is not a comparison configuration (a results.json written by compare)")


def _prepare(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot write to output directory {str(out)!r}: {exc.strerror}") from None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def _table(result: Any, key: str) -> Table:
    nfes = result.config.nfes
    better = "higher" if key in result.higher_is_better else "lower"
    table = Table(title=f"{key} ({better} is better) on {result.config.model}; * best per NFE",
                  title_justify="left")
    table.add_column("solver @ schedule")
    for n in nfes:
        table.add_column(f"NFE {n}", justify="right")
    best = {n: result.best(n, key) for n in nfes}
    for row in result.rows:
        cells = []
        for n in nfes:
            v = result.value(row, n, key)
            text = _fmt(v)
            cells.append(f"[bold green]{text}*[/]" if v is not None and v == best[n] else text)
        table.add_row(escape(row), *cells)
    if result.reference and key in result.reference:
        table.add_row("[dim]exact[/]", *[f"[dim]{_fmt(result.reference[key])}[/]"] * len(nfes))
    return table


def _write(out: Path, result: Any) -> list[str]:
    data = result.to_dict()
    atomic_write_bytes(out / "results.json", (jsontext.dumps(data) + "\n").encode())
    buf = io.StringIO()
    keys = result.keys()
    writer = csv.writer(buf)
    writer.writerow(["row", "nfe", "num_steps", *keys, "seconds"])
    for cell in result.cells:
        values = cell.values or {}
        writer.writerow([cell.row, cell.nfe, cell.num_steps if cell.num_steps else "",
                         *[values.get(k, "") for k in keys], f"{cell.seconds:.4f}"])
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    files = ["results.json", "results.csv"]
    if not any(cell.values for cell in result.cells):  # interrupted before the first cell
        (out / "plot.png").unlink(missing_ok=True)
        return files
    try:
        _plot(out / "plot.png", result)
        files.append("plot.png")
    except MissingExtraError as exc:
        err_console.print(f"[yellow]no plot:[/] {escape(str(exc))}")
    return files


def _plot(path: Path, result: Any) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("matplotlib", "plot", "the comparison plot") from exc
    keys = result.keys()
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [v for c in result.cells if c.values and math.isfinite(v := c.values.get(key, math.nan))]
        log = bool(values) and min(values) > 0  # errors and distances; scores may be <= 0
        for row in result.rows:
            points = [(n, v) for n in result.config.nfes
                      if (v := result.value(row, n, key)) is not None and math.isfinite(v) and (v > 0 or not log)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=row)
        if result.reference and result.reference.get(key):
            ax.axhline(result.reference[key], color="k", ls=":", label="exact endpoints")
        ax.set_yscale("log" if log else "linear")
        ax.set_xlabel("NFE")
        ax.set_ylabel(key)
        ax.set_title(f"{key} on {result.config.model}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
