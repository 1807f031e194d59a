"""Component options: typed dataclasses filled from ``--set scope.key=value`` overrides.

Every component class has an ``Options`` dataclass. Each field carries a help text
(``option(default, "help")``); values from the command line are converted to the
field's type (int, float, bool, str, Literal[...], Optional[...]) and checked by the
dataclass's ``__post_init__``. Every failure is a one-line ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from ..base.errors import ConfigError, closest



def option(default: Any, help: str, *, bounds: tuple[float | None, float | None] | None = None) -> Any:
    """A dataclass field with a default and a help text (shown by ``crnn list``).

    ``bounds=(low, high)`` (either may be None) is the range the code can honour, inclusive;
    ``build_options`` refuses a value outside it with a one-line error naming the option.
    """
    metadata: dict[str, Any] = {"help": help}
    if bounds is not None:
        metadata["bounds"] = bounds
    return dataclasses.field(default=default, metadata=metadata)


def bounds_problem(field: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` is outside ``field``'s declared ``bounds``, or None."""
    low, high = field.metadata.get("bounds", (None, None))
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        return f"must be {bounds_label(low, high)}, got {value}"
    return None


def check_bounds(options: Any) -> None:
    """Raise ``ValueError`` for a field of the dataclass instance ``options`` outside its ``bounds``
    (for ``__post_init__``, so that code constructing the options directly is checked too)."""
    for f in dataclasses.fields(options):
        problem = bounds_problem(f, getattr(options, f.name))
        if problem:
            raise ValueError(f"{f.name} {problem}")


def bounds_label(low: float | None, high: float | None) -> str:
    """``between 1 and 26``, ``>= 1`` or ``<= 10``."""
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f">= {low}" if low is not None else f"<= {high}"


@dataclasses.dataclass
class NoOptions:
    """For components without options."""


def _convert(raw: Any, typ: Any, where: str) -> Any:
    """Convert a raw value (a string from the CLI, or a JSON value) to ``typ``."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        value = str(raw) if not isinstance(raw, str) else raw
        for choice in choices:
            if str(choice) == value:
                return choice
        raise ConfigError(f"{where}: '{raw}' is not one of {', '.join(map(str, choices))}")
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            return None
        return _convert(raw, args[0], where)
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got '{raw}'")
    if typ is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected an integer, got '{raw}'")
        try:
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            return int(str(raw), 10)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got '{raw}'") from None
    if typ is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got '{raw}'") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got '{raw}'")
        return value
    if typ is str:
        return str(raw)
    raise ConfigError(f"{where}: unsupported option type {typ!r}")


def build_options(options_cls: type, raw: dict[str, Any], scope: str) -> Any:
    """Instantiate ``options_cls`` from raw values, with one-line errors for bad input."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        close = closest(unknown[0], fields)
        hint = f"; did you mean {scope}.{close}?" if close else ""
        raise ConfigError(f"unknown option {scope}.{unknown[0]}{hint} (valid {scope} options: {valid})")
    values = {name: _convert(value, hints[name], f"{scope}.{name}") for name, value in raw.items()}
    for name, value in values.items():
        problem = bounds_problem(fields[name], value) or _int64_problem(value)
        if problem:
            raise ConfigError(f"{scope}.{name} {problem}")
    try:
        return options_cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{scope}: {exc}") from None


#: Every integer option fits in a signed 64-bit integer (what PyTorch and the kernels index with).
INT64_LIMIT = 2**63


def _int64_problem(value: Any) -> str | None:
    """Why an integer option's ``value`` is out of 64-bit range, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_LIMIT <= value < INT64_LIMIT:
        return f"must fit in a 64-bit integer, got a number of {len(str(abs(value)))} digits"
    return None


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; for ``Options.__post_init__``."""
    if not condition:
        raise ValueError(message)


def type_label(hint: Any) -> str:
    """An option's type in words: ``int``, ``one of 'relu', 'tanh'``, ``float or None``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if args and type(None) in args:  # Optional[X] / X | None
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_label(a) for a in rest) + " or None"
    return getattr(hint, "__name__", str(hint))


def option_defaults(options_cls: Any) -> dict[str, Any]:
    """The default of each field of a dataclass of options (fields without a plain default left out)."""
    if not dataclasses.is_dataclass(options_cls):
        return {}
    return {f.name: f.default for f in dataclasses.fields(options_cls) if f.default is not dataclasses.MISSING}


def describe(options_cls: type) -> list[dict[str, Any]]:
    """Name, type, default, help and (where declared) range of each option field, for listings and docs."""
    hints = typing.get_type_hints(options_cls)
    rows = []
    for f in dataclasses.fields(options_cls):
        rows.append(
            {
                "name": f.name,
                "type": type_label(hints[f.name]),
                "default": f.default,
                "help": f.metadata.get("help", ""),
                **({"range": bounds_label(*f.metadata["bounds"])} if "bounds" in f.metadata else {}),
            }
        )
    return rows
