"""Label and field selectors as the API server parses them: `a=b,c!=d,e in (f,g),!h,i`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tests.support.kube_api.errors import ApiError, bad_request

Predicate = Callable[[Mapping[str, str]], bool]

_SET = re.compile(r"^\s*([^\s!=<>(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([^\s!=<>(),]+)\s*(==|=|!=)\s*([^\s!=<>(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=<>(),]+)\s*$")


def _split(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _requirement(text: str) -> Predicate:
    if match := _SET.match(text):
        key, op, values_text = match.groups()
        values = {v.strip() for v in values_text.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ.match(text):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(text):
        negated, key = match.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: {text.strip()!r}")


def label_selector(text: str | None) -> Predicate:
    """A predicate over an object's labels; an empty selector matches everything."""
    if not text:
        return lambda labels: True
    requirements = [_requirement(part) for part in _split(text)]
    return lambda labels: all(req(labels) for req in requirements)


_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda obj: str(obj["metadata"].get("name", "")),
    "metadata.namespace": lambda obj: str(obj["metadata"].get("namespace", "")),
}


def field_selector(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """`metadata.name=x` / `metadata.namespace!=y` (the fields every resource supports)."""
    if not text:
        return lambda obj: True
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for part in _split(text):
        match = _EQ.match(part)
        if match is None or match.group(1) not in _FIELDS:
            raise ApiError(
                400,
                "BadRequest",
                f'"{part.strip()}" is not a known field selector: only "metadata.name", '
                '"metadata.namespace"',
            )
        key, op, value = match.groups()
        checks.append(_field_check(_FIELDS[key], value, negated=op == "!="))
    return lambda obj: all(check(obj) for check in checks)


def _field_check(
    getter: Callable[[dict[str, Any]], str], value: str, *, negated: bool
) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        return (getter(obj) == value) is not negated

    return check
