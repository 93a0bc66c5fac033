"""Graceful drain on SIGTERM, with real `agentserver serve` processes behind a balancer:
not ready at once, in-flight work finishes, agents move at once, exit 0 within the grace, and
a rolling restart under a steady stream of requests fails none of them (issue 16)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import trio
import trio_websocket

from agentserver.agent.connect import Session
from tests.conftest import register
from tests.support.accounts import owner_of_workspace
from tests.support.replicas import Replicas, start_agent
from tests.support.sandbox_login import sandbox_client
from tests.support.upstream import RecordingUpstream, serve_upstream

DRAINING = re.compile(rb"draining: not ready")
GRACE = 20.0  # the replicas fixture's --shutdown-grace


async def raw_request(port: int, head: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(head)
    return stream


async def read_response(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a response whose connection ends with it."""
    data = b""
    with trio.fail_after(30):
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET on a new connection that asks to be kept alive (the server decides)."""
    stream = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    async with stream:
        return await read_response(stream)


async def hold_open(port: int) -> tuple[trio.SocketStream, bytes]:
    """A sign-in whose body has not all arrived: a request in flight, which keeps a draining
    replica running. Returns the connection and the rest of the body to send."""
    body = json.dumps({"username": "nobody", "password": "not-the-password"}).encode()
    stream = await raw_request(
        port,
        b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body[:5]),
    )
    return stream, body[5:]


def draining_rows(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM replicas WHERE draining").fetchone()
        assert row is not None
        return int(row[0])


async def test_sigterm_reports_not_ready_stays_alive_and_exits_zero_within_the_grace(
    replicas: Replicas, db_url: str
) -> None:
    """During the drain /readyz answers 503 and /healthz 200 (each saying `Connection: close`),
    the presence row says draining, and the process exits 0 well within --shutdown-grace."""
    replica = replicas[0]
    slow, rest = await hold_open(replica.port)  # holds the drain open while the probes look
    stopped_at = trio.current_time()
    replicas.signal(0, signal.SIGTERM)
    with trio.fail_after(30):
        await replica.output.wait_for(DRAINING)

    status, headers, ready = await get(replica.port, "/readyz")
    assert (status, json.loads(ready)["status"]) == (503, "draining")
    assert headers["connection"] == "close"
    status, headers, _ = await get(replica.port, "/healthz")
    assert (status, headers["connection"]) == (200, "close")
    assert await trio.to_thread.run_sync(draining_rows, db_url) == 1

    async with slow:
        await slow.send_all(rest)
        status, _, _ = await read_response(slow)
    assert status == 401
    assert await replicas.wait_exit(0, GRACE) == 0
    assert trio.current_time() - stopped_at < GRACE
    assert await trio.to_thread.run_sync(draining_rows, db_url) == 0  # its row is gone


async def test_a_request_in_flight_finishes_during_the_drain(replicas: Replicas) -> None:
    """A request whose body is still arriving when SIGTERM comes is answered in full, with
    `Connection: close`, and only then does the replica exit."""
    replica = replicas[1]
    async with httpx.AsyncClient(base_url=replica.url) as client:
        await register(client, "ada")
    body = json.dumps({"username": "ada", "password": "correct-horse"}).encode()
    slow = await raw_request(
        replica.port,
        b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body[:7]),
    )
    replicas.signal(1, signal.SIGTERM)
    with trio.fail_after(30):
        await replica.output.wait_for(DRAINING)
    assert replica.running  # held open by the request in flight
    async with slow:
        await slow.send_all(body[7:])
        status, headers, answer = await read_response(slow)
    assert status == 200, answer
    assert json.loads(answer)["user"]["username"] == "ada"
    assert headers["connection"] == "close"
    assert await replicas.wait_exit(1, GRACE) == 0


async def test_a_draining_replica_refuses_new_tunnels_with_503(replicas: Replicas) -> None:
    """The tunnel endpoint of a draining replica answers 503 (the agent tries again, through
    the balancer to another replica) before looking at the token."""
    replica = replicas[2]
    slow, rest = await hold_open(replica.port)
    replicas.signal(2, signal.SIGTERM)
    with trio.fail_after(30):
        await replica.output.wait_for(DRAINING)
    url = f"ws://127.0.0.1:{replica.port}/api/tunnel/abc"
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(
            url, extra_headers=[(b"authorization", b"Bearer not-a-token")]
        ):
            pass
    assert refused.value.status_code == 503
    assert b"shutting down" in (refused.value.body or b"")
    async with slow:
        await slow.send_all(rest)
        await read_response(slow)
    assert await replicas.wait_exit(2, GRACE) == 0


async def read_stream(response: httpx.Response) -> list[str]:
    """The lines of an event stream until it ends."""
    lines: list[str] = []
    with trio.fail_after(GRACE / 2):  # well before the drain's deadline
        async for line in response.aiter_lines():
            lines.append(line)
    return lines


async def test_event_streams_end_at_the_start_of_the_drain(replicas: Replicas) -> None:
    """A dashboard's event stream ends as the drain begins, not at its deadline (the replica
    is still running, held by a request in flight), and one opened during the drain gets its
    snapshot and ends, so browsers reconnect to another replica."""
    replica = replicas[0]
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as client:
        _, workspace = await owner_of_workspace(client)
        path = f"/api/workspaces/{workspace['id']}/events"
        async with client.stream("GET", path) as open_before:
            lines = open_before.aiter_lines()
            assert await lines.__anext__() == ": connected"
            slow, rest = await hold_open(replica.port)
            replicas.signal(0, signal.SIGTERM)
            with trio.fail_after(GRACE / 2):  # well before the drain's deadline
                async for _ in lines:
                    pass  # the stream ends
        assert replica.running
        async with client.stream("GET", path, headers={"Connection": "close"}) as opened_during:
            assert opened_during.status_code == 200
            assert (await read_stream(opened_during))[0] == ": connected"
        assert replica.running
    async with slow:
        await slow.send_all(rest)
        await read_response(slow)
    assert await replicas.wait_exit(0, GRACE) == 0


@asynccontextmanager
async def connected_agent(
    nursery: trio.Nursery, replicas: Replicas, tmp_path: Path, on: int
) -> AsyncIterator[tuple[Session, list[str], list[float], trio.Event]]:
    """A local agent whose tunnel is on replica `on` (the others are out of rotation while it
    connects): its session, its lines, the backoff waits it made, and an event set each time
    it is connected again."""
    upstream = await nursery.start(serve_upstream, RecordingUpstream())
    async with httpx.AsyncClient(base_url=replicas.url) as owner:
        _, workspace = await owner_of_workspace(owner)
        agent = await start_agent(
            nursery,
            replicas,
            owner,
            workspace["id"],
            f"http://127.0.0.1:{upstream.port}",
            tmp_path / "agent.json",
            on,
        )
    yield agent.session, agent.lines, agent.waits, agent.reconnected


async def test_an_agent_reconnects_at_once_to_another_replica_after_the_go_away(
    replicas: Replicas, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """SIGTERM on the tunnel's replica: the agent gets the go-away and its next attempt starts
    without a backoff wait, through the balancer, on another replica."""
    async with connected_agent(nursery, replicas, tmp_path, on=0) as (session, lines, waits, again):
        tunnels_before = len(replicas.balancer.routed)
        replicas.signal(0, signal.SIGTERM)
        with trio.fail_after(30):
            await again.wait()
        assert session.connections == 2
        assert session.immediate_reconnects == 1
        assert waits == [], lines
        assert "server restarting, reconnecting now" in lines
        assert replicas.balancer.routed[tunnels_before:][-1] in (1, 2)
        assert await replicas.wait_exit(0, GRACE) == 0


class Stream:
    """A steady stream of API requests through the balancer, by a few clients at once."""

    def __init__(self, url: str, cookies: httpx.Cookies, workspace_id: str) -> None:
        self.url, self.cookies, self.workspace_id = url, cookies, workspace_id
        self.done = trio.Event()
        self.answered = 0
        self.failures: list[str] = []

    async def client(self, number: int) -> None:
        # Keep-alive connections, as a browser or an API client has them.
        async with httpx.AsyncClient(base_url=self.url, cookies=self.cookies, timeout=30) as c:
            sent = 0
            while not self.done.is_set():
                sent += 1
                try:
                    if sent % 3 == 0:  # a write, which must never be sent twice
                        response = await c.post(
                            "/api/workspaces", json={"name": f"w{number}-{sent}"}
                        )
                        expected = 201
                    elif sent % 3 == 1:
                        response = await c.get("/api/workspaces")
                        expected = 200
                    else:
                        response = await c.get(f"/api/workspaces/{self.workspace_id}/sandboxes")
                        expected = 200
                except httpx.HTTPError as exc:
                    self.failures.append(f"client {number} request {sent}: {exc!r}")
                    continue
                if response.status_code != expected:
                    self.failures.append(f"client {number} request {sent}: {response.status_code}")
                else:
                    self.answered += 1


async def test_a_rolling_restart_under_a_steady_stream_of_requests_fails_none(
    replicas: Replicas,
) -> None:
    """Each replica in turn gets SIGTERM, exits 0 and starts again (same port) while clients
    send API requests through the balancer without pause: not one request fails."""
    async with httpx.AsyncClient(base_url=replicas.url) as owner:
        _, workspace = await owner_of_workspace(owner)
        stream = Stream(replicas.url, owner.cookies, workspace["id"])
    # The sandbox part of this stream (issue 16): the next test.
    async with trio.open_nursery() as clients:
        for number in range(3):
            clients.start_soon(stream.client, number)
        for index in range(len(replicas)):
            before = stream.answered
            assert await replicas.terminate(index, within=GRACE) == 0
            await replicas.start(index)
            assert stream.answered > before, "no request was answered during this restart"
        stream.done.set()
    assert stream.failures == []
    served = {i for i in replicas.balancer.routed if i is not None}
    assert served == {0, 1, 2}
    assert replicas.balancer.refused == 0  # terminated replicas were out of rotation


async def sandbox_client_loop(
    stream: Stream, sandbox: httpx.AsyncClient, number: int, sent: list[int]
) -> None:
    """Requests for the local agent's sandbox through the balancer, one after the other."""
    async with sandbox:
        while not stream.done.is_set():
            sent[0] += 1
            try:
                response = await sandbox.get("/json")
            except httpx.HTTPError as exc:
                stream.failures.append(f"sandbox client {number} request {sent[0]}: {exc!r}")
                continue
            if response.status_code != 200:
                stream.failures.append(
                    f"sandbox client {number} request {sent[0]}: {response.status_code}"
                    f" {response.text[:400]}"
                )
            else:
                stream.answered += 1


async def test_a_rolling_restart_fails_no_request_for_a_local_agents_sandbox(
    replicas: Replicas, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Each replica in turn gets SIGTERM, exits 0 and starts again (same port) while clients
    send API requests and requests for a local agent's sandbox (its tunnel moves at each
    restart of its replica) through the balancer without pause: not one request fails."""
    upstream = await nursery.start(serve_upstream, RecordingUpstream())
    async with httpx.AsyncClient(base_url=replicas.url) as owner:
        _, workspace = await owner_of_workspace(owner)
        stream = Stream(replicas.url, owner.cookies, workspace["id"])
        agent = await start_agent(
            nursery,
            replicas,
            owner,
            workspace["id"],
            f"http://127.0.0.1:{upstream.port}",
            tmp_path / "agent.json",
            on=0,
        )
        sandboxes = [
            await sandbox_client(
                replicas.url, owner, agent.sandbox_id, timeout=httpx.Timeout(30, read=None)
            )
            for _ in range(2)
        ]
    sandbox_sent = [0]
    async with trio.open_nursery() as clients:
        for number in range(3):
            clients.start_soon(stream.client, number)
        for number, sandbox in enumerate(sandboxes):
            clients.start_soon(sandbox_client_loop, stream, sandbox, number, sandbox_sent)
        for index in range(len(replicas)):
            before = stream.answered
            assert await replicas.terminate(index, within=GRACE) == 0
            await replicas.start(index)
            assert stream.answered > before, "no request was answered during this restart"
        stream.done.set()
    assert stream.failures == [], "\n".join(stream.failures)
    assert len(upstream.seen("/json")) == sandbox_sent[0] > 0
    assert agent.session.connections >= 2  # the tunnel moved when replica 0 drained
    served = {i for i in replicas.balancer.routed if i is not None}
    assert served == {0, 1, 2}
    assert replicas.balancer.refused == 0  # terminated replicas were out of rotation


async def test_the_balancer_skips_a_killed_replica_and_takes_it_back_once_restarted(
    replicas: Replicas,
) -> None:
    """The harness itself: after kill -9 the replica refuses connections and the balancer
    sends every request to the others (none fails); started again on the same port, it is
    back in rotation."""
    port = replicas[1].port
    assert await replicas.kill(1) == -signal.SIGKILL
    for _ in range(6):
        async with httpx.AsyncClient(base_url=replicas.url) as fresh:  # a new connection each
            assert (await fresh.get("/healthz")).status_code == 200
    assert replicas.balancer.refused >= 1
    await replicas.start(1)
    assert replicas[1].port == port
    routed = len(replicas.balancer.routed)
    for _ in range(3):
        async with httpx.AsyncClient(base_url=replicas.url) as fresh:
            assert (await fresh.get("/readyz")).status_code == 200
    assert 1 in replicas.balancer.routed[routed:]
