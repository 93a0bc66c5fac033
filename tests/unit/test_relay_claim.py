"""A request on the replica that has just claimed a sandbox's tunnel, in the moment between the
claim (the database names this replica) and the tunnel's registration in the hub: it waits for
the registration and is served here, instead of finding "no tunnel" and answering offline (a
rolling restart's handover once failed one request in ~700 that way). The same holds when the
claim is the agent's move from a draining owner (a request that waited for the move), and for a
request another replica relayed here on the strength of the claim."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import trio
import trio.testing

from agentserver.cluster.owners import Owner
from agentserver.cluster.relay_auth import Relayed, sign
from agentserver.proxy.relay import MovableUpstream, Relay
from agentserver.proxy.routing import Target
from agentserver.tunnel import Hub
from agentserver.tunnel.errors import TunnelClosed

ME = "replica-me"


class FakeOwners:
    """The database's answer: this replica owns the sandbox."""

    def __init__(self) -> None:
        self.lookups = 0

    async def lookup(self, sandbox_id: str, *, fresh: bool = False) -> Owner | None:
        await trio.lowlevel.checkpoint()
        self.lookups += 1
        return Owner(ME, 7, "http://127.0.0.1:9", alive=True)


class MovingOwners:
    """The database's answer: another replica owns the sandbox and drains; once the agent's
    new tunnel is claimed (`moved_here`), this replica owns it."""

    def __init__(self) -> None:
        self.owner = Owner("replica-old", 6, "http://127.0.0.1:9", alive=True, draining=True)
        self.changed = trio.Event()

    def moved_here(self) -> None:
        self.owner = Owner(ME, 7, "http://127.0.0.1:9", alive=True)
        self.changed.set()

    async def lookup(self, sandbox_id: str, *, fresh: bool = False) -> Owner | None:
        await trio.lowlevel.checkpoint()
        return self.owner

    async def moved(self, sandbox_id: str, generation: int) -> Owner | None:
        await self.changed.wait()
        return self.owner


KEY = b"k" * 32


def a_relay(hub: Hub, owners: object | None = None) -> Relay:
    cluster = SimpleNamespace(replica_id=ME, relay_secret=KEY)
    return Relay(cast(Any, cluster), cast(Any, owners or FakeOwners()), hub, cast(Any, None))


class LiveTunnel:
    """What the hub reads of a tunnel: open, not sent away; the requests opened on it (each
    then fails as if the agent had just gone)."""

    closed = False
    going_away = False

    def __init__(self) -> None:
        self.opened: list[str] = []

    async def open_request(self, method: str, target: str, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        self.opened.append(f"{method} {target}")
        raise TunnelClosed("gone")


def live_tunnel() -> Any:
    return LiveTunnel()


async def ask(relay: Relay, found: list[object]) -> None:
    """A request for the sandbox: what `relay.upstream` finds goes into `found`."""
    found.append(await relay.upstream("sbx", b"oc-sbx.example", "u", False, None))


async def during_a_claim(register: bool) -> list[object]:
    """What a request for the sandbox finds when it arrives while a claim is under way here,
    the claim then ending with the tunnel registered (or failed)."""
    hub = Hub()
    relay = a_relay(hub)
    claim = hub.claiming("sbx")
    found: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, relay, found)
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


async def test_a_request_that_waited_for_a_move_here_waits_for_the_registration() -> None:
    """The owner drains; the request waits for the agent's move; the new claim names this
    replica before its tunnel is registered: the request is served here, not answered
    "offline" (a rolling restart failed about one request in 1,500 that way)."""
    hub = Hub()
    owners = MovingOwners()
    relay = a_relay(hub, owners)
    found: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, relay, found)
        await trio.testing.wait_all_tasks_blocked()
        assert found == []  # waiting for the move
        claim = hub.claiming("sbx")
        owners.moved_here()
        await trio.testing.wait_all_tasks_blocked()
        assert found == []  # waiting for the registration
        await hub.register("sbx", live_tunnel(), (), 7)
        hub.settle("sbx", claim)
    assert len(found) == 1
    assert isinstance(found[0], MovableUpstream)


async def test_a_request_relayed_here_during_the_claim_goes_to_the_tunnel() -> None:
    """Another replica read our claim (generation 7) and relayed a request before the tunnel
    was registered here: it is taken to the tunnel once registered, not answered "stale"."""
    hub = Hub()
    relay = a_relay(hub)
    tunnel = LiveTunnel()
    host = b"oc-sbx.example"
    credential = sign(KEY, Relayed(ME, 7, "u", False), "GET", host, b"/json", time.time())
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/json",
        "raw_path": b"/json",
        "query_string": b"",
        "headers": [(b"host", host)],
        "client": ("127.0.0.1", 1),
    }
    sent: list[dict[str, Any]] = []
    pages: list[object] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    async def page(scope: Any, send: Any, found: object) -> None:
        await trio.lowlevel.checkpoint()
        pages.append(found)

    claim = hub.claiming("sbx")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            relay.serve,
            Target("opencode", "sbx"),
            cast(Any, scope),
            receive,
            send,
            credential,
            page,
        )
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # waiting for the registration
        assert pages == []
        await hub.register("sbx", cast(Any, tunnel), (), 7)
        hub.settle("sbx", claim)
    assert tunnel.opened == ["GET /json"]
    assert all(m.get("status") != 421 for m in sent)
