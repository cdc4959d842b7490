"""Reading JSON request fields with their types checked: a wrong type is a 400 naming the field."""

from __future__ import annotations

from typing import Any

from router.openai.errors import BadRequest

MISSING = object()


def need(body: dict, name: str, kinds: type | tuple[type, ...], *, where: str = "") -> Any:
    value = body.get(name, MISSING)
    if value is MISSING:
        raise BadRequest(f"'{where}{name}' is required", where + name)
    return check(value, name, kinds, where=where)


def optional(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None, *, where: str = "") -> Any:
    value = body.get(name, MISSING)
    if value is MISSING or value is None:
        return default
    return check(value, name, kinds, where=where)


def check(value: Any, name: str, kinds: type | tuple[type, ...], *, where: str = "") -> Any:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    # JSON true/false are Python bools, which are ints: a bool is a number only where asked for.
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if wrong_bool or not isinstance(value, kinds):
        expected = " or ".join(_json_name(k) for k in kinds)
        raise BadRequest(f"'{where}{name}' must be {expected}, not {_json_name(type(value))}", where + name)
    return value


def number(body: dict, name: str, *, low: float | None = None, high: float | None = None) -> float | None:
    value = optional(body, name, (int, float))
    if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
        raise BadRequest(f"'{name}' must be between {low} and {high}, not {value}", name)
    return value


def _json_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
            dict: "an object", type(None): "null"}.get(kind, kind.__name__)  # fmt: skip
