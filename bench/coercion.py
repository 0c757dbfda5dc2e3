"""Typed coercion of settings: a ``--set``/``--param`` string (or a Python value) to a field's annotated
type, one line naming the field and the allowed values when it cannot be. Shared by the config and the
method kit; it knows no setting by name, so it sits at the bottom with ``bench.errors``."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any, NoReturn

from bench.errors import ConfigError, did_you_mean


def invalid(name: str, value: Any, allowed: str, choices: Iterable[Any] = ()) -> NoReturn:
    """The one-line error of a bad setting; given the ``choices`` of a closed set, a near miss
    (``slf``, ``pgd-20``) is named before the list: ``(did you mean 'SLF'?)``."""
    raise ConfigError(f"{name}={value!r} is invalid{did_you_mean(value, choices)}: allowed {allowed}")


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
NONE_WORDS = ("", "none")


def coerce(hint: Any, raw: Any, name: str) -> Any:
    """``raw`` as a value of the type ``hint`` (a field's annotation from ``typing.get_type_hints``).

    Strings (CLI ``--set``/``--param`` values) are parsed: bool from true/false words, int,
    float (also ``8/255``), str, ``tuple[X, ...]`` from comma-separated items, ``X | None``
    from ``none`` or the empty string. Other values (settings tables, Python callers) are
    checked against the same type: an int for a float field becomes a float. Floats must be
    finite. Anything else raises ``ConfigError`` naming the field, the value and what is allowed.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"{name}: annotation {hint} is not supported: allowed X or X | None")
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in NONE_WORDS):
            return None
        return coerce(inner[0], raw, name)
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{name}: annotation {hint} is not supported: allowed tuple[X, ...]")
        items = [item for item in raw.split(",") if item] if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            invalid(name, raw, f"comma-separated {args[0].__name__} values")
        return tuple(coerce(args[0], item, name) for item in items)
    if hint is bool:
        return _coerce_bool(raw, name)
    if hint is int:
        return _coerce_int(raw, name)
    if hint is float:
        return _coerce_float(raw, name)
    if hint is str:
        if not isinstance(raw, str):
            invalid(name, raw, "strings")
        return raw
    if hint is Any:
        return raw
    raise TypeError(f"{name}: annotation {hint} is not supported by bench.config.coerce")


def _coerce_bool(raw: Any, name: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return raw.strip().lower() in TRUE_WORDS
    invalid(name, raw, "true/false")


def _coerce_int(raw: Any, name: str) -> int:
    if isinstance(raw, Integral) and not isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            pass
    invalid(name, raw, "int values")


def _coerce_float(raw: Any, name: str) -> float:
    value = None
    if isinstance(raw, Real) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = eval_fraction(raw)
        except (ValueError, ZeroDivisionError):
            invalid(name, raw, "float values (also fractions such as 8/255)")
    if value is None:
        invalid(name, raw, "float values (also fractions such as 8/255)")
    if not math.isfinite(value):
        invalid(name, raw, "finite numbers")
    return value


def eval_fraction(text: str) -> float:
    """Accept '8/255' as well as '0.0313' for pixel-scale numbers."""
    if "/" in text:
        numerator, denominator = text.split("/", 1)
        return float(numerator) / float(denominator)
    return float(text)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The annotations of a dataclass's fields, evaluated (``X | None``, ``tuple[int, ...]``)."""
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in dataclasses.fields(cls)}


def dotted_names(cls: type, prefix: str = "") -> list[str]:
    """Every leaf field of a dataclass tree by dotted name (``pretrain.lr``): what ``--set`` takes."""
    names = []
    for name, hint in field_types(cls).items():
        nested = dataclasses.is_dataclass(hint)
        names.extend(dotted_names(hint, f"{prefix}{name}.") if nested else [prefix + name])
    return names
