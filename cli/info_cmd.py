"""``diffsampler info NAME``: options, origin and paper of a component."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from diffsampler.errors import DiffSamplerError, UnknownComponentError
from diffsampler.options import describe_options
from diffsampler.registry import KINDS, Component, get_registry

from ._common import console, print_json

# machine-readable keys of `info --json` and their labels in the table
_LABELS = {
    "order": "order (default options)",
    "nfe_per_step": "NFE per step",
    "nfe_for_6_sigmas": "NFE for 6 sigmas (5 steps)",
    "recommended_schedule": "recommended schedule",
}


def _solver_facts(component: Component) -> dict[str, Any]:
    try:
        solver = component.create()
    except DiffSamplerError:
        return {}
    facts: dict[str, Any] = {}
    if hasattr(solver, "order"):
        facts["order"] = solver.order
    if hasattr(solver, "evals_per_step"):
        facts["nfe_per_step"] = solver.evals_per_step
    if hasattr(solver, "nfe"):
        facts["nfe_for_6_sigmas"] = solver.nfe(6)
    recommended = getattr(solver, "recommended_schedule", None)
    if recommended:
        facts["recommended_schedule"] = {"name": recommended[0], "options": dict(recommended[1] or {})}
    return facts


def _shown(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"name", "options"}:
        opts = ", ".join(f"{k}={v}" for k, v in value["options"].items())
        return f"{value['name']} {opts}".strip()
    return str(value)


def _describe(component: Component) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "kind": component.kind,
        "name": component.name,
        "summary": component.summary,
        "plugin": component.plugin,
        "distribution": f"{component.distribution} {component.version}",
    }
    if component.paper:
        facts["paper"] = component.paper
    if component.kind == "solver":
        facts.update(_solver_facts(component))
    describe = getattr(component.factory, "describe", None)
    if callable(describe):  # artefact-backed components add their own facts
        facts.update(describe())
    return facts


def info(
    name: Annotated[str, typer.Argument(help="a component name, or plugin:name")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show a component's options, what registered it, and the paper it implements."""
    registry = get_registry()
    found: list[Component] = []
    errors: list[DiffSamplerError] = []
    for kind in KINDS:
        try:
            found.append(registry.get(kind, name))
        except UnknownComponentError:
            continue
        except DiffSamplerError as exc:  # ambiguous: registered by two plugins
            errors.append(exc)
    if errors:
        raise errors[0]
    if not found:
        every = sorted({c.name for c in registry.components()})
        import difflib

        close = difflib.get_close_matches(name, every, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownComponentError(f"no component named {name!r}{hint} (see: diffsampler list)")
    if as_json:
        print_json(
            [
                {
                    **_describe(c),
                    "options": [
                        {"name": o.name, "type": o.type, "default": o.default, "help": o.help}
                        for o in describe_options(c.options)
                    ],
                }
                for c in found
            ]
        )
        return
    for component in found:
        facts = Table(show_header=False, box=None, title=f"{component.kind} {component.name}",
                      title_justify="left", title_style="bold")
        facts.add_column(style="cyan")
        facts.add_column(overflow="fold")
        for key, value in _describe(component).items():
            facts.add_row(escape(_LABELS.get(key, str(key))), escape(_shown(value)))
        console.print(facts)
        options = describe_options(component.options)
        table = Table(title="options", title_justify="left")
        for column in ("name", "type", "default", "help"):
            table.add_column(column, overflow="fold")
        for o in options:
            default = "(required)" if o.required else repr(o.default)
            table.add_row(*(escape(v) for v in (o.name, o.type, default, o.help)))
        if options:
            console.print(table)
        else:
            console.print("options: none")
