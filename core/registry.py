"""The component registry: what every plugin registered, and who registered it.

Plugins are found through the entry-point group ``diffsampler`` (built-in families are entry
points of this distribution, loaded exactly like a third party's). Each plugin's hooks are
called one by one, so a plugin that fails to import, or raises inside a hook, is recorded as a
:class:`PluginFailure` and never takes the others down. A name registered by two plugins stays
ambiguous until asked for as ``plugin:name``.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs
import pluggy

from . import hookspecs
from .errors import DuplicateComponentError, PluginError, UnknownComponentError
from .options import build_options

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Component",
    "PluginFailure",
    "PluginRecord",
    "Registry",
    "discover",
    "get_registry",
    "reset_registry",
]

ENTRY_POINT_GROUP = "diffsampler"
DISABLE_ENV = "DIFFSAMPLER_DISABLE_PLUGINS"

Kind = Literal["solver", "schedule", "model", "distiller", "metric"]
KINDS: tuple[Kind, ...] = ("solver", "schedule", "model", "distiller", "metric")
_HOOK_OF_KIND: dict[Kind, str] = {
    "solver": "register_solvers",
    "schedule": "register_schedules",
    "model": "register_models",
    "distiller": "register_distillers",
    "metric": "register_metrics",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@attrs.frozen(kw_only=True)
class PluginRecord:
    """A loaded plugin and the distribution that provides it."""

    name: str
    distribution: str
    version: str


@attrs.frozen(kw_only=True)
class PluginFailure:
    """A plugin that could not be loaded (``stage='import'``) or whose hook raised."""

    plugin: str
    distribution: str
    version: str
    stage: str
    error: str


@attrs.frozen(kw_only=True)
class Component:
    """One registered component."""

    kind: Kind
    name: str
    factory: Callable[..., Any] = attrs.field(eq=False)
    options: type | None = attrs.field(eq=False)
    summary: str
    plugin: str
    distribution: str
    version: str

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def paper(self) -> str | None:
        """The method's reference, from the factory's ``paper`` attribute when it has one."""
        return getattr(self.factory, "paper", None)

    def create(self, **values: Any) -> Any:
        """Validate ``values`` against the options class and call the factory."""
        owner = f"{self.kind} {self.name!r}"
        opts = build_options(self.options, values, owner=owner)
        if opts is None:
            return self.factory(**values)
        return self.factory(**{f.name: getattr(opts, f.name) for f in attrs.fields(type(opts))})


def _summary_of(factory: Callable[..., Any]) -> str:
    doc = (getattr(factory, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry:
    """Components by kind and name, plus the plugins that provided them and those that failed."""

    def __init__(self) -> None:
        self._components: dict[Kind, dict[str, list[Component]]] = {k: {} for k in KINDS}
        self.plugins: list[PluginRecord] = []
        self.failures: list[PluginFailure] = []
        self.plugin_manager: pluggy.PluginManager = _new_plugin_manager()

    # -- filling -------------------------------------------------------------------------
    def add(self, component: Component) -> None:
        same = self._components[component.kind].setdefault(component.name, [])
        if any(c.plugin == component.plugin for c in same):
            raise PluginError(
                f"plugin {component.plugin!r} registered {component.kind} "
                f"{component.name!r} twice"
            )
        same.append(component)

    def add_plugin(
        self, plugin: object, name: str, *, distribution: str = "-", version: str = "-"
    ) -> None:
        """Register ``plugin`` (an object with hookimpls) and collect its components.

        Failures are recorded in :attr:`failures`, never raised.
        """
        try:
            self.plugin_manager.register(plugin, name=name)
        except Exception as exc:  # invalid hookimpl signatures, unknown hooks
            self.failures.append(
                PluginFailure(
                    plugin=name, distribution=distribution, version=version,
                    stage="register", error=_describe(exc),
                )
            )
            return
        self.plugins.append(PluginRecord(name=name, distribution=distribution, version=version))
        for kind, hook_name in _HOOK_OF_KIND.items():
            hook = getattr(self.plugin_manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                if impl.plugin_name == name:
                    self._call_register_hook(impl, kind, hook_name, distribution, version)

    def _call_register_hook(
        self, impl: Any, kind: Kind, hook_name: str, distribution: str, version: str
    ) -> None:
        staged: list[Component] = []

        def register(
            name: str,
            factory: Callable[..., Any],
            *,
            summary: str | None = None,
            options: type | None = None,
        ) -> None:
            if not isinstance(name, str) or not _NAME.match(name):
                raise PluginError(f"invalid {kind} name {name!r} (letters, digits, _ . + -)")
            if not callable(factory):
                raise PluginError(f"{kind} {name!r}: factory {factory!r} is not callable")
            declared = getattr(factory, "Options", None)
            if options is None and isinstance(declared, type) and attrs.has(declared):
                options = declared  # a class's own Options is enough
            elif options is not None and declared is not None and options is not declared:
                raise PluginError(
                    f"{kind} {name!r}: options={getattr(options, '__name__', options)!r} is not "
                    f"{getattr(factory, '__name__', factory)}.Options; give one of the two"
                )
            if options is not None and not attrs.has(options):
                raise PluginError(f"{kind} {name!r}: options must be an attrs class")
            if any(c.name == name for c in staged):
                raise PluginError(f"plugin {impl.plugin_name!r} registered {kind} {name!r} twice")
            staged.append(
                Component(
                    kind=kind, name=name, factory=factory, options=options,
                    summary=summary if summary is not None else _summary_of(factory),
                    plugin=impl.plugin_name, distribution=distribution, version=version,
                )
            )

        try:
            impl.function(register=register)
            for component in staged:  # all or nothing: check every name before adding any
                if any(c.plugin == component.plugin for c in self._components[kind].get(component.name, [])):
                    raise PluginError(
                        f"plugin {component.plugin!r} registered {kind} {component.name!r} twice"
                    )
            for component in staged:
                self.add(component)
        except Exception as exc:
            self.failures.append(
                PluginFailure(
                    plugin=impl.plugin_name, distribution=distribution, version=version,
                    stage=hook_name, error=_describe(exc),
                )
            )

    # -- reading -------------------------------------------------------------------------
    def components(self, kind: Kind | None = None) -> list[Component]:
        kinds = KINDS if kind is None else (kind,)
        out = [c for k in kinds for same in self._components[k].values() for c in same]
        return sorted(out, key=lambda c: (KINDS.index(c.kind), c.name, c.plugin))

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._components[kind])

    def get(self, kind: Kind, name: str) -> Component:
        """Look up ``name`` or ``plugin:name``; unknown and ambiguous names raise."""
        if kind not in self._components:
            raise UnknownComponentError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        plugin, _, bare = name.rpartition(":")
        candidates = self._components[kind].get(bare, [])
        if plugin:
            candidates = [c for c in candidates if c.plugin == plugin]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            who = " and ".join(repr(c.plugin) for c in candidates)
            options = ", ".join(c.qualified_name for c in candidates)
            raise DuplicateComponentError(
                f"{kind} {bare!r} is registered by plugins {who}; choose one: {options}"
            )
        raise UnknownComponentError(self._unknown_message(kind, name))

    def _unknown_message(self, kind: Kind, name: str) -> str:
        known = self.names(kind)
        bare = name.rpartition(":")[2]
        close = difflib.get_close_matches(bare, known, n=3, cutoff=0.5)
        close += [k for k in known if k.startswith(bare) and k not in close][: 3 - len(close)]
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        msg += f"; available: {', '.join(known) if known else 'none'}"
        broken = [f.plugin for f in self.failures]
        if broken:
            msg += f" (plugins that failed to load: {', '.join(sorted(set(broken)))})"
        return msg

    def create(self, kind: Kind, name: str, **options: Any) -> Any:
        return self.get(kind, name).create(**options)

    def register_commands(self, app: Any) -> None:
        """Call every plugin's ``register_commands(app)``; failures are recorded."""
        origin = {p.name: p.distribution for p in self.plugins}
        impls = self.plugin_manager.hook.register_commands.get_hookimpls()
        # diffsampler's own commands first: a plugin cannot take the name of a built-in one
        for impl in sorted(impls, key=lambda i: origin.get(i.plugin_name) != "diffsampler"):
            commands, groups = len(app.registered_commands), len(app.registered_groups)
            taken = _command_names(app)
            try:
                impl.function(app=app)
                added = _command_names(app, commands, groups)
                clash = sorted(set(added) & set(taken)) or sorted({n for n in added if added.count(n) > 1})
                if clash:
                    raise PluginError(f"command {clash[0]!r} already exists; a plugin cannot replace it")
            except Exception as exc:
                # a failed hook adds no command at all
                del app.registered_commands[commands:], app.registered_groups[groups:]
                record = next((p for p in self.plugins if p.name == impl.plugin_name), None)
                self.failures.append(
                    PluginFailure(
                        plugin=impl.plugin_name,
                        distribution=record.distribution if record else "-",
                        version=record.version if record else "-",
                        stage="register_commands", error=_describe(exc),
                    )
                )


def _command_names(app: Any, commands: int = 0, groups: int = 0) -> list[str]:
    """Names of ``app``'s commands and sub-apps from the given positions on (Typer's naming:
    an explicit name, else the callback's name with dashes)."""

    def named(info: Any) -> str:
        if info.name:
            return str(info.name)
        callback = getattr(info, "callback", None) or getattr(getattr(info, "typer_instance", None), "info", None)
        callback = getattr(callback, "callback", callback)
        return str(getattr(callback, "__name__", "")).lower().replace("_", "-")

    return [named(c) for c in app.registered_commands[commands:]] + [
        named(g) for g in app.registered_groups[groups:]
    ]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def disabled_plugins(environ: Mapping[str, str] | None = None) -> set[str]:
    env = os.environ if environ is None else environ
    return {p.strip() for p in env.get(DISABLE_ENV, "").split(",") if p.strip()}


def discover(
    *,
    entry_points: bool = True,
    plugins: Iterable[tuple[str, object]] = (),
    disabled: Iterable[str] | None = None,
) -> Registry:
    """Build a registry from the installed entry points and/or given ``(name, plugin)`` pairs.

    ``disabled`` defaults to the comma-separated names in ``DIFFSAMPLER_DISABLE_PLUGINS``.
    """
    blocked = disabled_plugins() if disabled is None else set(disabled)
    registry = Registry()
    if entry_points:
        seen: set[str] = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or ep.name in seen:
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else "-"
            dist_version = dist.version if dist is not None else "-"
            try:
                plugin = ep.load()
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(
                        plugin=ep.name, distribution=dist_name, version=dist_version,
                        stage="import", error=_describe(exc),
                    )
                )
                continue
            registry.add_plugin(plugin, ep.name, distribution=dist_name, version=dist_version)
    for name, plugin in plugins:
        if name not in blocked:
            registry.add_plugin(plugin, name)
    return registry


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, discovered from entry points on first use."""
    global _default
    if _default is None:
        _default = discover()
    return _default


def reset_registry(registry: Registry | None = None) -> None:
    """Forget (or replace) the process-wide registry; tests use this."""
    global _default
    _default = registry
