"""Which access a revocation covers: a user, narrowed to a workspace or a main session."""

from __future__ import annotations

import pytest

from agentserver.auth.revocation import Revocation

EVERYWHERE = Revocation("u1")
ONE_WORKSPACE = Revocation("u1", workspace_id="w1")
ONE_SESSION = Revocation("u1", session_hash="s1")
ALL_BUT_ONE = Revocation("u1", keep_session="s1")


@pytest.mark.parametrize(
    ("revocation", "user", "workspace", "session", "covered"),
    [
        (EVERYWHERE, "u1", "w1", "s1", True),
        (EVERYWHERE, "u1", "w2", None, True),
        (EVERYWHERE, "u2", "w1", "s1", False),
        (ONE_WORKSPACE, "u1", "w1", "s7", True),
        (ONE_WORKSPACE, "u1", "w2", "s7", False),
        (ONE_SESSION, "u1", "w2", "s1", True),
        (ONE_SESSION, "u1", "w1", "s2", False),
        (ONE_SESSION, "u1", "w1", None, False),
        (ALL_BUT_ONE, "u1", "w1", "s2", True),
        (ALL_BUT_ONE, "u1", "w1", "s1", False),
        (ALL_BUT_ONE, "u2", "w1", "s2", False),
    ],
)
def test_what_a_revocation_covers(
    revocation: Revocation, user: str, workspace: str, session: str | None, covered: bool
) -> None:
    """Each kind of revocation covers exactly the access it names."""
    assert revocation.covers(user, workspace, session) is covered
