"""Per-workspace event pub/sub: delivery, isolation between workspaces, dropping slow readers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.auth.revocation import Revocation
from agentserver.sandboxes.events import WorkspaceEvents


async def test_a_subscriber_receives_its_workspace_events_in_order() -> None:
    """Events published to a workspace reach its subscriber in publication order."""
    events = WorkspaceEvents()
    with events.subscribe("w1") as sub:
        assert events.publish_nowait("w1", {"type": "sandbox", "n": 1}) == 1
        events.publish_nowait("w1", {"type": "sandbox", "n": 2})
        assert [(await sub.inbox.receive())["n"] for _ in range(2)] == [1, 2]


async def test_other_workspaces_do_not_see_the_event() -> None:
    """A subscriber of one workspace gets nothing published to another."""
    events = WorkspaceEvents()
    with events.subscribe("w1") as one, events.subscribe("w2") as two:
        assert events.publish_nowait("w2", {"type": "x"}) == 1
        assert two.inbox.receive_nowait() == {"type": "x"}
        with pytest.raises(trio.WouldBlock):
            one.inbox.receive_nowait()


async def test_a_slow_subscriber_is_dropped_without_blocking_the_publisher() -> None:
    """A subscriber whose buffer is full is dropped (its inbox ends); others still get events."""
    events = WorkspaceEvents(buffer=2)
    slow = events.subscribe("w")
    with events.subscribe("w") as fast:
        for n in range(2):
            events.publish_nowait("w", {"n": n})
            assert (await fast.inbox.receive())["n"] == n
        delivered = events.publish_nowait("w", {"n": 2})  # slow already holds 2: it overflows
        assert delivered == 1
        assert slow.dropped
        assert events.listeners("w") == 1
        assert [e["n"] async for e in slow.inbox] == [0, 1]  # what it had, then the end
        assert (await fast.inbox.receive())["n"] == 2
    slow.close()


async def test_leaving_the_block_unsubscribes() -> None:
    """Closing a subscription removes it, so publishing finds no listener."""
    events = WorkspaceEvents()
    with events.subscribe("w"):
        assert events.listeners("w") == 1
    assert events.listeners("w") == 0
    assert events.publish_nowait("w", {"type": "x"}) == 0


async def test_close_all_ends_every_subscription() -> None:
    """At shutdown every open stream ends, whichever workspace it follows."""
    events = WorkspaceEvents()
    subs = [events.subscribe(w) for w in ("a", "b", "b")]
    events.close_all()
    for sub in subs:
        assert [e async for e in sub.inbox] == []
        sub.close()
    assert events.listeners("a") == events.listeners("b") == 0


async def test_closing_a_workspace_ends_every_stream() -> None:
    """When a workspace is deleted its subscribers' inboxes end, so their streams finish."""
    events = WorkspaceEvents()
    sub = events.subscribe("w")
    received: list[object] = []

    async def read() -> None:
        async for event in sub.inbox:
            received.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        events.publish_nowait("w", {"type": "last"})
        await trio.testing.wait_all_tasks_blocked()
        events.close_workspace("w")
    assert received == [{"type": "last"}]
    assert events.listeners("w") == 0
    sub.close()


async def test_an_observer_sees_every_workspace_and_a_failing_one_stops_nothing() -> None:
    """Observers get each event of any workspace as it is published; one that raises does
    not keep the event from the others or from subscribers."""
    events = WorkspaceEvents()
    seen: list[tuple[str, str]] = []

    def broken(workspace_id: str, event: dict[str, object]) -> None:
        raise RuntimeError("observer bug")

    events.observe(broken)
    events.observe(lambda workspace_id, event: seen.append((workspace_id, str(event["type"]))))
    with events.subscribe("w2") as sub:
        events.publish_nowait("w1", {"type": "sandbox"})
        assert events.publish_nowait("w2", {"type": "sandbox_deleted"}) == 1
        assert sub.inbox.receive_nowait() == {"type": "sandbox_deleted"}
    assert seen == [("w1", "sandbox"), ("w2", "sandbox_deleted")]


async def test_ending_a_members_access_ends_only_their_subscriptions() -> None:
    """A revocation for one member of one workspace ends their subscriptions to it and no
    one else's (nor theirs elsewhere)."""
    events = WorkspaceEvents()
    with (
        events.subscribe("w1", "alice", "s1") as alice,
        events.subscribe("w1", "bob", "s2") as bob,
        events.subscribe("w2", "alice", "s1") as elsewhere,
    ):
        assert events.end(Revocation("alice", workspace_id="w1")) == 1
        with pytest.raises(trio.EndOfChannel):
            await alice.inbox.receive()
        assert events.publish_nowait("w1", {"n": 1}) == 1
        assert bob.inbox.receive_nowait() == {"n": 1}
        assert events.publish_nowait("w2", {"n": 2}) == 1
        assert elsewhere.inbox.receive_nowait() == {"n": 2}


async def test_signing_out_ends_that_sessions_subscriptions_in_every_workspace() -> None:
    """A revocation of one main session ends its subscriptions everywhere and leaves the
    same user's other session and other users open."""
    events = WorkspaceEvents()
    with (
        events.subscribe("w1", "alice", "s1") as one,
        events.subscribe("w2", "alice", "s1") as two,
        events.subscribe("w2", "alice", "s9") as other_browser,
        events.subscribe("w2", "bob", "s1") as bob,
    ):
        assert events.end(Revocation("alice", session_hash="s1")) == 2
        for sub in (one, two):
            with pytest.raises(trio.EndOfChannel):
                await sub.inbox.receive()
        assert events.listeners("w2") == 2
        assert events.publish_nowait("w2", {"n": 1}) == 2
        assert other_browser.inbox.receive_nowait() == {"n": 1}
        assert bob.inbox.receive_nowait() == {"n": 1}
