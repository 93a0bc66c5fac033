"""Which access a revocation covers: a user, narrowed to a workspace or a main session."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from agentserver.auth.revocation import Revocation
from agentserver.auth.tickets import AccessCache, SandboxAccess
from agentserver.models import Role, Sandbox

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


def test_a_revocation_for_one_sandbox_covers_only_access_to_it() -> None:
    """Making a sandbox private ends the user's access to that sandbox, not to the others in
    the workspace, nor their workspace event stream (which names no sandbox)."""
    revocation = Revocation("u1", workspace_id="w1", sandbox_id="sb1")
    assert revocation.covers("u1", "w1", "s1", "sb1")
    assert not revocation.covers("u1", "w1", "s1", "sb2")
    assert not revocation.covers("u1", "w1", "s1")
    assert not revocation.covers("u2", "w1", "s1", "sb1")


def access_of(user: str, workspace: str, session: str) -> SandboxAccess:
    now = datetime.now(UTC)
    sandbox = Sandbox(
        id="sb",
        workspace_id=workspace,
        name="sb",
        type="opencode",
        status="running",
        status_reason=None,
        created_by=None,
        created_at=now,
        updated_at=now,
        last_activity_at=now,
        paused_at=None,
        agent_secret="x",
        endpoint_host=None,
        endpoint_port=None,
        backend_ref=None,
        last_heartbeat_at=None,
    )
    return SandboxAccess(user, Role.DEVELOPER, sandbox, session)


async def test_revoking_cancels_only_the_covered_requests_in_flight() -> None:
    """`AccessCache.revoke` cancels the live requests it covers, leaves the others running,
    and a finished request leaves nothing registered."""
    cache = AccessCache(db=None)  # type: ignore[arg-type]  # no lookups in this test
    ended: list[str] = []

    async def request(name: str, access: SandboxAccess) -> None:
        with cache.live(access):
            await trio.sleep_forever()
        ended.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "signed-out", access_of("u1", "w1", "s1"))
        nursery.start_soon(request, "other-browser", access_of("u1", "w1", "s2"))
        await trio.testing.wait_all_tasks_blocked()
        assert cache.revoke(Revocation("u1", session_hash="s1")) == 1
        await trio.testing.wait_all_tasks_blocked()
        assert ended == ["signed-out"]
        assert cache.revoke(Revocation("u1")) == 1
    assert ended == ["signed-out", "other-browser"]
    assert cache.revoke(Revocation("u1")) == 0
