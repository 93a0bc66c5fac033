"""Several replicas, one local agent: ownership in the database and the relay to the owner."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio

from agentserver.cluster import owners as owners_module
from agentserver.cluster.owners import Owner
from agentserver.cluster.relay_auth import HEADER, Relayed, sign
from agentserver.db.database import Tx, open_database
from agentserver.models import Sandbox
from agentserver.proxy.relay import RelayUpstream
from tests.support.bulk_upstream import BulkUpstream, pattern, serve_bulk
from tests.support.relay_world import Replicas, open_replicas, start_replica
from tests.support.sandbox_login import sandbox_client, sandbox_cookie
from tests.support.tunnel_world import Agent, free_port
from tests.support.upstream import RecordingUpstream, serve_upstream
from tests.support.workspace_events import watch_statuses


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> RecordingUpstream:
    """The agent's stand-in opencode (HTTP, SSE and a WebSocket echo)."""
    return await nursery.start(serve_upstream, RecordingUpstream())  # type: ignore[no-any-return]


@pytest.fixture
async def replicas(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> AsyncIterator[Replicas]:
    async with open_replicas(nursery, db_url, tmp_path) as found:
        yield found


async def connect(replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery) -> Agent:
    """A local agent connected to replica a, its sandbox `running`."""
    agent = await replicas.world.start_agent(nursery, f"http://127.0.0.1:{upstream.port}")
    async with watch_statuses(replicas.world.owner, replicas.world.workspace_id) as watch:
        await watch.until(agent.sandbox_id, "running")
    return agent


async def stay_away(delay: float) -> None:
    await trio.sleep_forever()


async def test_each_replica_serves_the_sandbox_http_sse_and_websocket(
    replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """The owner serves from its tunnel and the other replica relays: plain requests, a
    request body, an event stream and a WebSocket all work on both, and what reaches the agent
    carries none of our cookies or relay headers."""
    agent = await connect(replicas, upstream, nursery)
    sid = agent.sandbox_id
    for server in (replicas.a, replicas.b):
        async with await replicas.browser(server, sid) as browser:
            for _ in range(100):
                answer = await browser.get("/json")
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"ok": True, "path": "/json"}
            echoed = await browser.post("/echo", content=b"x" * 300_000)
            assert echoed.content == b"x" * 300_000
            async with browser.stream("GET", "/sse") as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                assert upstream.sse_send is not None
                await upstream.sse_send.send(f"via {server.port}")
                async for line in events.aiter_lines():
                    if line.startswith("data:"):
                        assert json.loads(line[5:])["payload"] == f"via {server.port}"
                        break
                await upstream.sse_send.send("")
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Host": replicas.host(sid)}
        ) as sub:
            cookie = await sandbox_cookie(replicas.world.owner, sub, sid)
        async with replicas.websocket(server, sid, cookie, "/pty/1/connect") as ws:
            await ws.send_message(f"hello {server.port}")
            with trio.fail_after(10):
                assert await ws.get_message() == f"echo:hello {server.port}"
    assert replicas.b.running.proxy.relay.relayed >= 103
    assert replicas.a.running.proxy.relay.served >= 103
    assert replicas.a.running.proxy.relay.relayed == 0
    for seen in [*upstream.requests, *upstream.websockets]:
        names = {name for name, _ in seen.headers}
        assert not any(name.startswith("x-agentserver-relay") for name in names), seen
        assert all("agentserver_" not in value for value in seen.header("cookie")), seen


async def test_a_100_mb_download_through_a_non_owner_arrives_intact_with_flat_memory(
    replicas: Replicas, nursery: trio.Nursery
) -> None:
    """100 MB from the agent through the owner's tunnel and the other replica's relay arrives
    byte for byte (same SHA-256) while the process's peak RSS (both replicas, the agent and
    the upstream) grows far less than the body."""
    try:
        _reset_peak()
    except OSError:
        pytest.skip("cannot reset the RSS peak (/proc/self/clear_refs)")
    bulk = await nursery.start(serve_bulk, BulkUpstream())
    agent = await replicas.world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    await replicas.until_status(agent.sandbox_id, "running")
    size = 100 * 1024 * 1024
    block = pattern(1 << 20)
    expected = hashlib.sha256()
    for _ in range(100):
        expected.update(block)
    async with await replicas.browser(replicas.b, agent.sandbox_id) as browser:
        assert (await browser.get("/small")).status_code == 200  # warm: pools, code paths
        _reset_peak()
        before = _peak_kib()
        got, digest = 0, hashlib.sha256()
        async with browser.stream("GET", f"/bytes?size={size}") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                got += len(chunk)
        peak = _peak_kib()
    assert got == size
    assert digest.hexdigest() == expected.hexdigest()
    assert replicas.b.running.proxy.relay.relayed >= 2
    assert (peak - before) < 40 * 1024, f"peak RSS grew by {(peak - before) // 1024} MiB"


def _reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM), Linux ≥ 4.0."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_relay_requests_without_a_valid_credential_are_refused(
    replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """At the owner, our relay header is honoured only with the cluster's MAC over this very
    request: missing, wrong key, another path, another host or a replay is 403 and reaches
    nothing; the valid one is served."""
    agent = await connect(replicas, upstream, nursery)
    sid, owner = agent.sandbox_id, replicas.a
    host = replicas.host(sid)
    generation = owner.deps.hub.generation(sid)
    relayed = Relayed(owner.deps.cluster.replica_id, generation, None, False)
    key = owner.deps.cluster.relay_secret

    def credential(target: bytes, *, for_host: str = host, secret: bytes = key) -> str:
        return sign(secret, relayed, "GET", for_host.encode(), target, time.time()).decode()

    valid = credential(b"/json")
    before = len(upstream.seen("/json")) + len(upstream.seen("/session"))
    async with httpx.AsyncClient(base_url=owner.url, headers={"Host": host}) as raw:
        refused = [
            await raw.get("/json", headers={HEADER.decode(): ""}),
            await raw.get("/json", headers={HEADER.decode(): "v1 x 1 2 3 - 0 00"}),
            await raw.get(
                "/json", headers={HEADER.decode(): credential(b"/json", secret=b"k" * 32)}
            ),
            await raw.get("/session", headers={HEADER.decode(): valid}),
            await raw.get(
                "/json",
                headers={HEADER.decode(): credential(b"/json", for_host=f"oc-x{sid}.localhost")},
            ),
        ]
        served = await raw.get("/json", headers={HEADER.decode(): valid})
        replayed = await raw.get("/json", headers={HEADER.decode(): valid})
    assert [r.status_code for r in refused] == [403] * 5
    assert all(r.json()["error"]["code"] == "relay_refused" for r in refused)
    assert served.status_code == 200, served.text
    assert served.json() == {"ok": True, "path": "/json"}
    assert replayed.status_code == 403
    assert len(upstream.seen("/json")) + len(upstream.seen("/session")) == before + 1


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_the_owner_answers_stale_for_an_old_generation_and_the_relay_retries(
    replicas: Replicas,
    upstream: RecordingUpstream,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """A relay holding an outdated owner (generation moved on, its notice missed) gets 421 from
    the owner before anything reaches the agent, re-reads ownership and succeeds on the retry
    (a plain request and a WebSocket alike)."""
    monkeypatch.setattr(owners_module, "CACHE_SECONDS", 3600.0)
    agent = await connect(replicas, upstream, nursery)
    sid = agent.sandbox_id
    relay_b = replicas.b.running.proxy.relay
    async with await replicas.browser(replicas.b, sid) as browser:
        assert (await browser.get("/json")).status_code == 200  # b caches (a, generation 1)
        cookie = browser.headers["cookie"].split("=", 1)[1]
    first = replicas.a.deps.hub.get(sid)
    old = replicas.a.deps.hub.generation(sid)
    owners_b = replicas.b.deps.tunnels.owners
    monkeypatch.setattr(owners_b, "notice", lambda notice: None)  # b misses the change
    assert agent.session is not None
    agent.session.wait = stay_away
    twin = await replicas.start_twin(nursery, agent, f"http://127.0.0.1:{upstream.port}")
    await replicas.a.deps.hub.wait_finished(first)
    assert replicas.a.deps.hub.generation(sid) not in (None, old)
    relayed, served = relay_b.relayed, replicas.a.running.proxy.relay.served
    if kind == "http":
        async with await replicas.browser(replicas.b, sid) as browser:
            answer = await browser.get("/json")
        assert answer.status_code == 200, answer.text
    else:
        async with replicas.websocket(replicas.b, sid, cookie, "/pty/2/connect") as ws:
            await ws.send_message("again")
            with trio.fail_after(10):
                assert await ws.get_message() == "echo:again"
    assert relay_b.relayed == relayed + 2  # the stale try, then the retry
    assert replicas.a.running.proxy.relay.served == served + 1
    twin.cancel()


async def test_a_replica_starting_leaves_another_replicas_live_tunnel_running(
    db_url: str, tmp_path: Path, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """A replica's start-up sweep marks offline only local sandboxes no live replica serves: the
    agent connected to the first replica stays `running`, an orphaned `running` one goes."""
    async with open_replicas(nursery, db_url, tmp_path) as replicas:
        agent = await connect(replicas, upstream, nursery)
        orphan = await replicas.world.owner.post(
            "/api/agent/register", json={"code": await replicas.world.code(), "name": "orphan"}
        )
        orphan_id = orphan.json()["sandboxId"]
        async with open_database(db_url, listen_changes=False) as db:
            await db.transaction(
                lambda tx: tx.conn.execute(
                    "UPDATE sandboxes SET status = 'running' WHERE id = %s", (orphan_id,)
                )
            )
        third = await start_replica(nursery, db_url, tmp_path / "c")
        try:
            assert await replicas.status(agent.sandbox_id) == "running"
            assert await replicas.status(orphan_id) == "offline"
            async with await replicas.browser(third, agent.sandbox_id) as browser:
                assert (await browser.get("/json")).status_code == 200
        finally:
            third.shutdown.set()


async def test_a_dead_owners_tunnel_goes_offline_and_comes_back_on_another_replica(
    replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """When the owner stops beating it is dead: within the dead interval another replica's
    sweep marks its sandbox `offline`; the agent reconnecting to the other replica makes it
    `running`, and both replicas answer for it again."""
    agent = await connect(replicas, upstream, nursery)
    sid, session = agent.sandbox_id, agent.session
    assert session is not None
    may_reconnect = trio.Event()

    async def held(delay: float) -> None:
        await may_reconnect.wait()

    session.wait = held
    presence = replicas.a.deps.cluster.presence

    async def frozen() -> None:
        await trio.sleep_forever()

    presence.beat = frozen  # replica a is as good as killed: its row ages
    await replicas.until_status(sid, "offline", seconds=4 * presence.dead_after + 10)
    replicas.move_agent(agent, replicas.b)
    may_reconnect.set()
    await replicas.until_status(sid, "running")
    assert replicas.b.deps.hub.get(sid) is not None
    for server in (replicas.b, replicas.a):
        async with await replicas.browser(server, sid) as browser:
            answer = await browser.get("/json")
            assert answer.status_code == 200, answer.text


async def test_a_second_tunnel_on_another_replica_supersedes_the_first(
    replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """The same agent connecting to replica b takes the sandbox over with a newer generation:
    a's tunnel is closed, the sandbox stays `running`, and a relays to b."""
    agent = await connect(replicas, upstream, nursery)
    sid = agent.sandbox_id
    first = replicas.a.deps.hub.get(sid)
    old = replicas.a.deps.hub.generation(sid)
    assert first is not None
    assert old is not None
    assert agent.session is not None
    agent.session.wait = stay_away  # the first connection does not come back
    twin = await replicas.start_twin(
        nursery, agent, f"http://127.0.0.1:{upstream.port}", server=replicas.b
    )
    with trio.fail_after(30):
        await replicas.a.deps.hub.wait_finished(first)
    assert replicas.a.deps.hub.get(sid) is None
    new = replicas.b.deps.hub.generation(sid)
    assert new is not None
    assert new > old
    assert await replicas.status(sid) == "running"
    async with await replicas.browser(replicas.a, sid) as browser:
        assert (await browser.get("/json")).status_code == 200
    assert replicas.a.running.proxy.relay.relayed >= 1
    assert replicas.b.running.proxy.relay.served >= 1
    twin.cancel()


async def test_a_preview_of_a_shared_port_is_relayed_and_an_unshared_one_refused(
    replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """`p{port}-{id}` on the replica without the tunnel reaches the laptop's dev server through
    the owner; a port the agent does not share is refused by the owner (403)."""
    app: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    agent = await replicas.world.start_agent(
        nursery, f"http://127.0.0.1:{upstream.port}", allow_ports=[app.port]
    )
    sid = agent.sandbox_id
    await replicas.until_status(sid, "running")
    for port, status in ((app.port, 200), (upstream.port, 403)):
        host = f"p{port}-{sid}.localhost:{replicas.a.port}"
        async with await sandbox_client(
            replicas.b.url, replicas.world.owner, sid, host=host
        ) as preview:
            answer = await preview.get("/json", headers={"Accept": "application/json"})
        assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == "preview_port_not_allowed"
    assert [seen.target for seen in app.requests] == ["/json"]
    assert replicas.b.running.proxy.relay.relayed == 2
    assert replicas.a.running.proxy.relay.served == 1  # the refused one never entered the tunnel


async def test_an_owner_that_is_gone_is_retried_once_with_the_body_kept(
    replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """A relay to an owner that refuses the connection (it died after the lookup) reads
    ownership again and sends the request, body and all, to the owner that holds the tunnel."""
    agent = await connect(replicas, upstream, nursery)
    sid = agent.sandbox_id
    relay_b = replicas.b.running.proxy.relay
    gone = Owner("gone", 1, f"http://127.0.0.1:{free_port()}", alive=True)
    host = replicas.host(sid).encode()
    relayed = RelayUpstream(relay_b, gone, sid, host, Relayed("gone", 1, None, False), None)

    async def body() -> AsyncIterator[bytes]:
        yield b"kept "
        yield b"body"

    response = await relayed.request(
        b"POST", b"/echo", [(b"host", host)], body(), length=len(b"kept body")
    )
    try:
        assert response.status == 200
        assert b"".join([chunk async for chunk in response.body]) == b"kept body"
    finally:
        await response.aclose()
    assert relay_b.relayed == 2
    assert replicas.a.running.proxy.relay.served == 1


async def test_a_request_that_chose_the_owners_tunnel_as_a_drain_sent_it_away_follows_it(
    replicas: Replicas, upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """The owner's proxy picks the sandbox's tunnel for a request; before the request opens
    a stream on it, a drain sends the tunnel away and the agent moves to replica b: the request
    goes to b and is answered, not refused with "unreachable" (a rolling restart failed about
    one request in 1,000 that way)."""
    agent = await connect(replicas, upstream, nursery)
    sid = agent.sandbox_id
    a = replicas.a.running
    sandbox = await a.deps.db.one("proxy_get_sandbox", Sandbox, id=sid)
    host = replicas.host(sid).encode()
    scope = {"type": "http", "method": "GET", "headers": [(b"host", host)]}

    async def nothing(message: object) -> None:
        raise AssertionError(f"a page was sent: {message}")

    chosen = await a.proxy.upstream_for(cast(Any, scope), nothing, sandbox)
    assert chosen is not None
    replicas.move_agent(agent, replicas.b)
    assert a.deps.hub.move_all() == 1

    async def no_body() -> AsyncIterator[bytes]:
        return
        yield b""

    response = await chosen.request(b"GET", b"/json", [(b"host", host)], no_body(), length=0)
    try:
        assert response.status == 200
        assert json.loads(b"".join([c async for c in response.body])) == {
            "ok": True,
            "path": "/json",
        }
    finally:
        await response.aclose()
    assert replicas.b.running.proxy.relay.served == 1  # b holds the tunnel now


async def test_an_ownership_row_left_behind_by_a_failed_release_is_swept(
    replicas: Replicas, db_url: str
) -> None:
    """A row naming a live replica that holds no such tunnel (its release was lost) is removed
    by that replica's sweep, and the sandbox goes `offline` instead of staying `running`."""
    registered = await replicas.world.owner.post(
        "/api/agent/register", json={"code": await replicas.world.code(), "name": "left"}
    )
    sid = registered.json()["sandboxId"]
    replica_id = replicas.a.deps.cluster.replica_id
    async with open_database(db_url, listen_changes=False) as db:

        def leave_a_row(tx: Tx) -> None:  # one transaction: no sweep sees half of it
            tx.conn.execute("UPDATE sandboxes SET status = 'running' WHERE id = %s", (sid,))
            tx.conn.execute(
                "INSERT INTO tunnel_owners (sandbox_id, replica_id, generation, claimed_at)"
                " VALUES (%s, %s, nextval('tunnel_generation'), now() - interval '1 minute')",
                (sid, replica_id),
            )

        await db.transaction(leave_a_row)
        assert await replicas.status(sid) == "running"
        await replicas.until_status(sid, "offline")
        assert await db.rows("tunnel_owned_by", replica_id=replica_id, settled=0.0) == []
