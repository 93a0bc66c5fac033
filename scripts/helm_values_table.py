"""README's Helm values table, generated from helm/agentserver/values.yaml's `# --` comments.

usage: python scripts/helm_values_table.py   (prints the table; tests/unit/test_readme.py checks
README.md holds exactly this between its helm-values markers)

A key is documented by the `# --` comment block right above it (continued by plain `#` lines);
a documented key whose value is a mapping is listed as a whole (e.g. `workspace.resources`),
otherwise its documented leaves are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

VALUES = Path(__file__).resolve().parents[1] / "helm/agentserver/values.yaml"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9_]*):")


def documented(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for each key with a `# --` comment, in file order."""
    found: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    comment: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment is not None:
            comment.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if match:
            indent = len(match["indent"])
            path = [(i, k) for i, k in path if i < indent] + [(indent, match["key"])]
            if comment is not None:
                found.append((".".join(k for _, k in path), " ".join(comment)))
        comment = None if not stripped.startswith("#") else comment
    return found


def _value(values: dict[str, object], dotted: str) -> object:
    value: object = values
    for part in dotted.split("."):
        assert isinstance(value, dict)
        value = value[part]
    return value


def _shown(value: object) -> str:
    if value == "" or value is None:
        return '`""`'
    if isinstance(value, dict | list):
        return f"`{json.dumps(value, separators=(',', ':'))}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def markdown_table(text: str | None = None) -> str:
    text = VALUES.read_text() if text is None else text
    values = yaml.safe_load(text)
    rows = ["| Parameter | Description | Default |", "|---|---|---|"]
    documented_keys = documented(text)
    parents = {key for key, _ in documented_keys}
    for key, description in documented_keys:
        value = _value(values, key)
        # A mapping whose own keys are documented is listed through them, not as a whole.
        if isinstance(value, dict) and any(k.startswith(key + ".") for k in parents):
            continue
        cell = description.replace("|", "\\|")
        rows.append(f"| `{key}` | {cell} | {_shown(value)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
