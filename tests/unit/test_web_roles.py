"""The web UI's copy of the role matrix is the server's matrix."""

from __future__ import annotations

import json
import re

from agentserver.auth.permissions import GRANTABLE, MATRIX, PRIVATE_ACTIONS
from agentserver.db.paths import web_dir


def _table(source: str, name: str) -> dict[str, list[str]]:
    """The `export const NAME = {...};` object literal of roles.js, read as JSON."""
    match = re.search(rf"export const {name} = (\{{.*?\n\}});", source, re.DOTALL)
    assert match, f"{name} not found in web/roles.js"
    body = re.sub(r"(\w+):", r'"\1":', match.group(1)).replace("'", '"')
    return dict(json.loads(re.sub(r",\s*}", "}", body)))


def test_web_role_matrix_matches_permissions() -> None:
    """Every action and grantable role in web/roles.js equals auth/permissions.py."""
    source = (web_dir() / "roles.js").read_text()
    web_matrix = _table(source, "MATRIX")
    assert {k: set(v) for k, v in web_matrix.items()} == {
        a.value: {r.value for r in roles} for a, roles in MATRIX.items()
    }
    web_grantable = _table(source, "GRANTABLE")
    assert {k: set(v) for k, v in web_grantable.items()} == {
        r.value: {g.value for g in roles} for r, roles in GRANTABLE.items()
    }


def test_every_action_has_words_for_the_role_table() -> None:
    """The members page's role table (generated from MATRIX) has words for every action."""
    source = (web_dir() / "roles.js").read_text()
    words = _table(source, "ACTION_TEXT")
    assert set(words) == {a.value for a in MATRIX}
    assert all(isinstance(text, str) and text for text in words.values())


def test_web_private_actions_match_permissions() -> None:
    """What someone else's private sandbox withholds is the same list in web/roles.js."""
    source = (web_dir() / "roles.js").read_text()
    match = re.search(r"export const PRIVATE_ACTIONS = \[(.*?)\];", source)
    assert match, "PRIVATE_ACTIONS not found in web/roles.js"
    assert set(re.findall(r"'(\w+)'", match.group(1))) == {a.value for a in PRIVATE_ACTIONS}
