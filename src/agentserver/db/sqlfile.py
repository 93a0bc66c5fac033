"""Parser for named-query SQL files (`-- name: x :one` blocks with `:param` names); pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """What a query returns."""

    ONE = "one"
    MANY = "many"
    SCALAR = "scalar"
    EXEC = "exec"
    EXECROWS = "execrows"


class SqlFileError(ValueError):
    """A query file is malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Query:
    """One named query, its SQL rewritten to psycopg's `%(name)s` placeholders."""

    name: str
    kind: Kind
    sql: str
    params: tuple[str, ...]
    source: str


_HEADER = re.compile(r"^--\s*name:\s*(?P<name>\S+)\s+:(?P<kind>\w+)\s*$")
_HEADERISH = re.compile(r"^--\s*name\s*:", re.IGNORECASE)
# `:name` but not the second half of a `::type` cast.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
# Parts of SQL where a `:word` is not a parameter: literals, quoted identifiers, comments.
_OPAQUE = re.compile(
    r"""(?P<literal>'(?:[^']|'')*'|"(?:[^"]|"")*"|\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$)"""
    r"|(?P<comment>--[^\n]*|/\*.*?\*/)",
    re.DOTALL,
)


def _rewrite(sql: str) -> tuple[str, tuple[str, ...]]:
    """Replace `:param` by `%(param)s` outside literals and comments; drop comments; escape `%`."""
    out: list[str] = []
    params: list[str] = []

    def sub(match: re.Match[str]) -> str:
        if match.group(1) not in params:
            params.append(match.group(1))
        return f"%({match.group(1)})s"

    pos = 0
    for opaque in _OPAQUE.finditer(sql):
        out.append(_PARAM.sub(sub, sql[pos : opaque.start()].replace("%", "%%")))
        if opaque["literal"] is not None:
            out.append(opaque["literal"].replace("%", "%%"))
        pos = opaque.end()
    out.append(_PARAM.sub(sub, sql[pos:].replace("%", "%%")))
    return "".join(out), tuple(params)


def parse(text: str, source: str = "<sql>") -> dict[str, Query]:
    """Every named query in one file; duplicates, unknown kinds and empty bodies are errors."""
    queries: dict[str, Query] = {}
    name: str | None = None
    kind: Kind | None = None
    body: list[str] = []
    start = 0

    def finish() -> None:
        if name is None or kind is None:
            return
        rewritten, params = _rewrite("\n".join(body))
        rewritten = rewritten.strip().rstrip(";").strip()
        if not rewritten:
            raise SqlFileError(f"{source}:{start}: query {name!r} has no SQL")
        queries[name] = Query(name, kind, rewritten, params, f"{source}:{start}")

    for lineno, line in enumerate(text.splitlines(), 1):
        match = _HEADER.match(line.strip())
        if match:
            finish()
            name, body, start = match["name"], [], lineno
            try:
                kind = Kind(match["kind"])
            except ValueError:
                raise SqlFileError(
                    f"{source}:{lineno}: unknown kind :{match['kind']} "
                    f"(use one of {', '.join(':' + k for k in Kind)})"
                ) from None
            if name in queries:
                raise SqlFileError(f"{source}:{lineno}: query {name!r} defined twice")
        elif _HEADERISH.match(line.strip()):
            raise SqlFileError(f"{source}:{lineno}: malformed header {line.strip()!r}")
        elif name is not None:
            body.append(line)
        elif line.strip() and not line.strip().startswith("--"):
            raise SqlFileError(f"{source}:{lineno}: SQL before the first `-- name:` header")
    finish()
    return queries
