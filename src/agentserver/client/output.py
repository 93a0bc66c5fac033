"""What the command line prints: JSON for scripts, an aligned table for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

Column = tuple[str, str]  # (heading, key in each row)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as text columns under upper-case headings, each as wide as its widest cell."""
    grid = [[heading.upper() for heading, _ in columns]]
    grid += [[cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    lines = [
        "  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)) for line in grid
    ]
    return "\n".join(line.rstrip() for line in lines)


def show(data: Any, columns: Sequence[Column], as_json: bool) -> None:
    """A listing (or one object) as JSON or as a table."""
    if as_json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    rows = data if isinstance(data, list) else [data]
    print(table(rows, columns) if rows else "(none)")
