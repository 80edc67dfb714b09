"""``diffsampler list``: every installed component, and the plugins that failed."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from diffsampler.errors import OptionError
from diffsampler.registry import KINDS, get_registry

from ._common import console, print_json

_ALIASES = {k + "s": k for k in KINDS}


def list_components(
    kind: Annotated[
        Optional[str],  # noqa: UP045 - Typer needs Optional on Python 3.10
        typer.Argument(help="solver, schedule, model, distiller or metric (plural works too)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List installed components: kind, name, plugin, distribution, version, summary."""
    registry = get_registry()
    wanted = None
    if kind is not None:
        wanted = _ALIASES.get(kind, kind)
        if wanted not in KINDS:
            raise OptionError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    components = registry.components(wanted)
    if as_json:
        print_json(
            {
                "components": [
                    {
                        "kind": c.kind, "name": c.name, "plugin": c.plugin,
                        "distribution": c.distribution, "version": c.version,
                        "summary": c.summary,
                    }
                    for c in components
                ],
                "failures": [
                    {
                        "plugin": f.plugin, "distribution": f.distribution,
                        "version": f.version, "stage": f.stage, "error": f.error,
                    }
                    for f in registry.failures
                ],
            }
        )
        return
    table = Table(title="diffsampler components", title_justify="left")
    for column in ("kind", "name", "plugin", "distribution", "version", "summary"):
        table.add_column(column, overflow="fold")
    for c in components:
        ambiguous = len([o for o in components if o.kind == c.kind and o.name == c.name]) > 1
        name = escape(c.name)
        if ambiguous:
            name += f" [yellow](use {escape(c.qualified_name)})[/]"
        table.add_row(c.kind, name, *(escape(v) for v in (c.plugin, c.distribution, c.version, c.summary)))
    console.print(table)
    if registry.failures:
        broken = Table(title="plugins that failed to load", title_justify="left", style="red")
        for column in ("plugin", "distribution", "stage", "error"):
            broken.add_column(column, overflow="fold")
        for f in registry.failures:
            broken.add_row(*(escape(v) for v in (f.plugin, f"{f.distribution} {f.version}", f.stage, f.error)))
        console.print(broken)
