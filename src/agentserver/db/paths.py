"""Where the shipped SQL and web files are: inside the wheel, or the repository when editable."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
_REPO = Path(__file__).resolve().parents[3]


def shipped(name: str) -> Path:
    """`_sql`/`_web` force-included in the wheel, else `sql`/`web` at the repository root."""
    inside = _PACKAGE / f"_{name}"
    return inside if inside.is_dir() else _REPO / name


def sql_dir() -> Path:
    return shipped("sql")


def web_dir() -> Path:
    return shipped("web")
