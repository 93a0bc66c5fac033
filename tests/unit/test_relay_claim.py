"""A request on the replica that has just claimed a sandbox's tunnel, in the moment between the
claim (the database names this replica) and the tunnel's registration in the hub: it waits for
the registration and is served here, instead of finding "no tunnel" and answering offline (a
rolling restart's handover once failed one request in ~700 that way)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import trio
import trio.testing

from agentserver.cluster.owners import Owner
from agentserver.proxy.relay import MovableUpstream, Relay
from agentserver.tunnel import Hub

ME = "replica-me"


class FakeOwners:
    """The database's answer: this replica owns the sandbox."""

    def __init__(self) -> None:
        self.lookups = 0

    async def lookup(self, sandbox_id: str, *, fresh: bool = False) -> Owner | None:
        await trio.lowlevel.checkpoint()
        self.lookups += 1
        return Owner(ME, 7, "http://127.0.0.1:9", alive=True)


def a_relay(hub: Hub) -> Relay:
    cluster = SimpleNamespace(replica_id=ME, relay_secret=b"k" * 32)
    return Relay(cast(Any, cluster), cast(Any, FakeOwners()), hub, cast(Any, None))


class LiveTunnel:
    """What the hub reads of a tunnel: open, not sent away."""

    closed = False
    going_away = False


def live_tunnel() -> Any:
    return LiveTunnel()


async def during_a_claim(register: bool) -> list[object]:
    """What a request for the sandbox finds when it arrives while a claim is under way here,
    the claim then ending with the tunnel registered (or failed)."""
    hub = Hub()
    relay = a_relay(hub)
    claim = hub.claiming("sbx")
    found: list[object] = []

    async def request() -> None:
        found.append(await relay.upstream("sbx", b"oc-sbx.example", "u", False, None))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        await trio.testing.wait_all_tasks_blocked()
        assert found == []  # still waiting for the claim to end
        if register:
            await hub.register("sbx", live_tunnel(), (), 7)
        hub.settle("sbx", claim)
    return found


async def test_a_request_during_the_claim_waits_for_the_registration() -> None:
    found = await during_a_claim(register=True)
    assert len(found) == 1
    assert isinstance(found[0], MovableUpstream)


async def test_a_failed_claim_ends_the_wait() -> None:
    assert await during_a_claim(register=False) == [None]


async def test_without_a_claim_under_way_nobody_is_found_at_once() -> None:
    relay = a_relay(Hub())
    with trio.fail_after(5):
        assert await relay.upstream("sbx", b"oc-sbx.example", "u", False, None) is None
