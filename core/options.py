"""Options classes: ``attrs`` frozen, kw-only, validated; introspected by the CLI and ``info``.

A component declares its options as an attrs class whose fields use :func:`option`::

    @attrs.frozen(kw_only=True)
    class IPNDMOptions:
        max_order: int = option(4, help="highest Adams-Bashforth order", validator=in_range(1, 4))

:func:`build_options` turns user input (Python values or CLI strings) into an instance, with one
clear :class:`~diffsampler.errors.OptionError` for an unknown name or a bad value.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

import attrs

from .errors import OptionError

__all__ = [
    "OptionInfo",
    "build_options",
    "choice",
    "describe_options",
    "from_record",
    "in_range",
    "option",
    "options_as_dict",
    "parse_inline",
    "parse_pairs",
    "positive",
]

_HELP = "diffsampler.help"


def option(
    default: Any = attrs.NOTHING,
    *,
    help: str,
    validator: Callable[[Any, attrs.Attribute[Any], Any], None] | None = None,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    """An attrs field carrying a help text (shown by ``diffsampler info``)."""
    return attrs.field(
        default=default, validator=validator, converter=converter, metadata={_HELP: help}
    )


def in_range(low: float, high: float | None = None) -> Callable[[Any, Any, Any], None]:
    """Validator: ``low <= value <= high`` (``high=None``: no upper bound)."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(f"option {attribute.name} must be a number, got {value!r}")
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise OptionError(f"option {attribute.name} must be in {bounds}, got {value!r}")

    return check


def positive(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Validator: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise OptionError(f"option {attribute.name} must be a positive number, got {value!r}")
    if value == float("inf"):
        raise OptionError(f"option {attribute.name} must be finite, got {value!r}")


def choice(*allowed: Any) -> Callable[[Any, Any, Any], None]:
    """Validator: one of ``allowed``."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in allowed:
            names = ", ".join(repr(a) for a in allowed)
            raise OptionError(f"option {attribute.name} must be one of {names}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class OptionInfo:
    """One option of a component, as ``diffsampler info`` shows it."""

    name: str
    type: str
    default: Any
    help: str
    required: bool


def _fields(cls: type) -> tuple[attrs.Attribute[Any], ...]:
    attrs.resolve_types(cls)
    return attrs.fields(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else "any"
        return f"tuple[{inner}, ...]" if len(args) == 2 and args[1] is Ellipsis else f"tuple[{inner}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def describe_options(cls: type | None) -> list[OptionInfo]:
    """The options of an options class, in declaration order."""
    if cls is None:
        return []
    out = []
    for f in _fields(cls):
        required = f.default is attrs.NOTHING
        default: Any = None if required else f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        out.append(
            OptionInfo(
                name=f.name,
                type=_type_name(f.type),
                default=default,
                help=f.metadata.get(_HELP, ""),
                required=required,
            )
        )
    return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(text: str, tp: Any, name: str) -> Any:
    """Convert one CLI string to the field's type."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in {"none", "null", ""}:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(text, arg, name)
            except OptionError as exc:
                errors.append(str(exc))
        raise OptionError(f"option {name} expects {_type_name(tp)}, got {text!r}")
    if origin is Literal:
        for arg in typing.get_args(tp):
            if str(arg) == text:
                return arg
        raise OptionError(f"option {name} must be one of {_type_name(tp)}, got {text!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        return tuple(_parse(p.strip(), args[0] if args else str, name) for p in parts)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise OptionError(f"option {name} expects true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise OptionError(f"option {name} expects {tp.__name__}, got {text!r}") from None
    return text


def build_options(cls: type | None, values: Mapping[str, Any], *, owner: str) -> Any:
    """Build ``cls`` from ``values``; strings are converted to the field types (CLI input).

    Raises :class:`OptionError` naming ``owner`` (e.g. ``"solver 'ipndm'"``) for an unknown
    option (with close matches) or a value its validator refuses.
    """
    fields = {f.name: f for f in _fields(cls)} if cls is not None else {}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(fields) or "none"
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(f"{owner} has no option {key!r}{hint}; its options: {known}")
        if isinstance(value, str) and fields[name].type is not str:
            try:
                value = _parse(value, fields[name].type, name)
            except OptionError as exc:
                raise OptionError(f"{owner}: {exc}") from None
        kwargs[name] = value
    if cls is None:
        return None
    missing = [f for f in fields.values() if f.default is attrs.NOTHING and f.init and f.name not in kwargs]
    if missing:
        f = missing[0]
        about = f.metadata.get(_HELP) if f.metadata else None
        flag = {"solver": "--opt", "model": "--model-opt", "schedule": "--schedule-opt"}.get(owner.split()[0])
        raise OptionError(
            f"{owner} needs option {f.name!r}" + (f" ({about})" if about else "")
            + (f"; on the command line: {flag} {f.name}=..." if flag else "")
        )
    try:
        return cls(**kwargs)
    except OptionError as exc:
        raise OptionError(f"{owner}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{owner}: {exc}") from None


def parse_pairs(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """Repeated ``key=value`` flags (``--opt a=1 --opt b=x``) into a dict of strings."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{flag} expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def parse_inline(text: str | None, where: str) -> dict[str, str]:
    """One ``"a=1,b=x"`` string (``NAME[a=1,b=x]`` specs) into a dict of strings."""
    return parse_pairs([p for p in (text or "").split(",") if p.strip()], where)


def from_record(cls: type, data: Mapping[str, Any], *, what: str) -> Any:
    """Rebuild an attrs configuration from its saved dict; unknown keys are a clear error."""
    unknown = set(data) - {f.name for f in _fields(cls)}
    if unknown:
        raise OptionError(f"{what} has unknown keys: {', '.join(sorted(unknown))}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{what}: {exc}") from None


def options_as_dict(options: Any) -> dict[str, Any]:
    """A JSON-ready dict of an options instance (``{}`` for ``None``)."""
    if options is None:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(options).items()}
