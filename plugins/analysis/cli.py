"""``diffsampler analyze KIND``: one sub-command per registered analysis.

Every sub-command samples the trajectories of ``--seeds`` with ``--solver`` on ``--steps`` noise
levels of ``--model``, runs the analysis and writes ``KIND.png``, ``KIND.pdf``, ``KIND.csv`` and
``KIND.json`` in ``--out``. Analysis options are ``--param key=value`` (see each command's help).
"""


from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from diffsampler.options import describe_options, parse_pairs

from .registry import ANALYSES, analysis_names

__all__ = ["add_commands", "make_command"]



def _options_help(kind: str) -> str:
    rows = describe_options(ANALYSES[kind].Options)
    parts = [f"{r.name} (default {r.default!r}): {r.help}" for r in rows]
    return "; ".join(parts) if parts else "none"


def make_command(kind: str) -> Callable[..., None]:
    """The Typer command function of analysis ``kind``."""

    def command(
        model: Annotated[str, typer.Option(help="registered model or model file")] = "gmm",
        model_opt: Annotated[list[str] | None, typer.Option("--model-opt", help="model option key=value")] = None,
        solver: Annotated[str, typer.Option(help="registered solver")] = "euler",
        opt: Annotated[list[str] | None, typer.Option("--opt", help="solver option key=value")] = None,
        schedule: Annotated[
            str | None, typer.Option(help="registered schedule (default: the solver's recommended one)")
        ] = None,
        schedule_opt: Annotated[
            list[str] | None, typer.Option("--schedule-opt", help="schedule option key=value")
        ] = None,
        steps: Annotated[int, typer.Option(help="noise levels (num_steps): steps - 1 solver steps")] = 19,
        seeds: Annotated[str, typer.Option(help="seeds, e.g. 0-63")] = "0-31",
        labels: Annotated[
            str | None, typer.Option(help="class labels per seed, as sample: random, seed or a class index")
        ] = None,
        param: Annotated[
            list[str] | None, typer.Option("--param", help=f"analysis option key=value: {_options_help(kind)}")
        ] = None,
        dtype: Annotated[str, typer.Option(help="auto (float64 for analytic models), float32, float64")] = "auto",
        device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "cpu",
        batch: Annotated[int, typer.Option(help="trajectories sampled at once")] = 64,
        out: Annotated[Path, typer.Option(help="output directory")] = Path("analysis"),
        afs: Annotated[
            bool, typer.Option(help="analytical first step (as sample --afs; AMED predictors are trained with it)")
        ] = False,
        plot: Annotated[
            bool, typer.Option(help="write the PNG and PDF plots (needs the \\[plot] extra)")
        ] = True,
    ) -> None:
        from diffsampler.seeds import parse_seeds

        from .collect import collect
        from .run import analyze, prepare_output, write_result

        params = parse_pairs(param, "--param")
        # Validate the analysis options before sampling anything.
        from diffsampler.options import build_options

        build_options(ANALYSES[kind].Options, params, owner=f"analysis {kind!r}")
        if plot:
            from .plotting import pyplot

            pyplot()  # a missing [plot] extra fails before the work, with one line
        prepare_output(out)
        setup = collect(
            model=model, model_options=parse_pairs(model_opt, "--model-opt"), solver=solver,
            solver_options=parse_pairs(opt, "--opt"), schedule=schedule,
            schedule_options=parse_pairs(schedule_opt, "--schedule-opt"), num_steps=steps,
            seeds=parse_seeds(seeds), dtype=dtype, device=device, batch=batch, afs=afs, labels=labels,
        )
        result, options = analyze(kind, setup, params)
        files = write_result(out, result, config=setup.config, options=options, plot=plot)
        typer.echo(f"{kind}: " + ", ".join(f"{k}={v}" for k, v in _headline(result.summary)))
        typer.echo(f"wrote {', '.join(p.name for p in files)} in {out}")

    command.__doc__ = ANALYSES[kind].summary
    return command


def _headline(summary: dict[str, object]) -> list[tuple[str, str]]:
    out = []
    for key, value in summary.items():
        if isinstance(value, float):
            out.append((key, f"{value:.4g}"))
        elif isinstance(value, dict):
            inner = ",".join(f"{k}:{v:.4g}" if isinstance(v, float) else f"{k}:{v}" for k, v in value.items())
            out.append((key, f"{{{inner}}}"))
        else:
            out.append((key, str(value)))
    return out


def add_commands(app: typer.Typer) -> None:
    """Add the ``analyze`` sub-app, one command per registered analysis, to ``app``."""
    sub = typer.Typer(
        name="analyze", no_args_is_help=True,
        help="Trajectory geometry (Chen et al. 2023, 2024): plots (PNG, PDF) and numbers (CSV, JSON).",
    )
    for kind in analysis_names():
        sub.command(kind, help=ANALYSES[kind].summary)(make_command(kind))
    app.add_typer(sub, name="analyze")
