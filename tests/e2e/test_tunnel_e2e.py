"""The local agent tunnel end to end: a real server, a real `agent connect`, a real opencode."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import httpx
import pytest
import trio

from agentserver.http1 import Headers
from agentserver.proxy.exchange import Exchange
from tests.e2e.conftest import read_until
from tests.support.bulk_upstream import BulkUpstream, pattern
from tests.support.tunnel_world import TunnelWorld
from tests.support.workspace_events import watch_statuses

REPO = Path(__file__).resolve().parents[2]


async def test_opencode_web_ui_api_events_and_terminal_through_the_tunnel(
    world: TunnelWorld, laptop_opencode: str, nursery: trio.Nursery
) -> None:
    """Through the subdomain proxy and the tunnel: `/` is opencode's HTML, `/session` JSON,
    `/event` an SSE event, and `/pty` a live terminal."""
    agent = await world.start_agent(nursery, laptop_opencode)
    sid = agent.sandbox_id
    async with watch_statuses(world.owner, world.workspace_id) as watch:
        await watch.until(sid, "running")
    async with await world.browser(sid) as browser:
        page = await browser.get("/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert "<html" in page.text.lower()
        sessions = await browser.get("/session")
        assert sessions.status_code == 200
        assert isinstance(sessions.json(), list)
        async with browser.stream("GET", "/event") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            async for line in events.aiter_lines():
                if line.startswith("data:"):
                    assert json.loads(line[5:])["type"] == "server.connected"
                    break
        pty = await browser.post("/pty", json={"command": "/bin/sh"})
        assert pty.status_code == 200, pty.text
        pty_id = pty.json()["id"]
    cookie = await world.cookie(sid)
    async with world.websocket(sid, cookie, f"/pty/{pty_id}/connect") as ws:
        await ws.send_message("echo tunnel-$((6*7))\n")
        output = ""
        with trio.fail_after(30):
            while "tunnel-42" not in output:
                message = await ws.get_message()
                output += message if isinstance(message, str) else message.decode(errors="replace")


async def test_a_hundred_sse_streams_over_one_tunnel_arrive_complete_and_in_order(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """100 concurrent event streams through one tunnel each receive all 50 numbered events,
    in order."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    count = 50
    received: dict[int, list[int]] = {}
    async with await world.browser(
        agent.sandbox_id, limits=httpx.Limits(max_connections=None)
    ) as browser:

        async def one(n: int) -> None:
            ids: list[int] = []
            async with browser.stream("GET", f"/numbers?count={count}&n={n}") as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        ids.append(int(line[5:]))
            received[n] = ids

        with trio.fail_after(240):
            async with trio.open_nursery() as streams:
                for n in range(100):
                    streams.start_soon(one, n)
    assert len(received) == 100
    assert all(ids == list(range(count)) for ids in received.values())


async def test_a_burst_of_events_to_a_slow_browser_arrives_whole_and_in_order(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """3,000 events of 3 bytes to 24 KiB in bursts of ten, to a browser with a small receive
    buffer: some go out from the tunnel's reader (the proxy's task waiting), some wait for the
    browser or behind others, some are too large for that path; every event arrives whole,
    once and in order."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    sid = agent.sandbox_id
    cookie = await world.cookie(sid)
    count, pad = 3000, 24 * 1024
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before the handshake
    await sock.connect(("127.0.0.1", world.server.port))
    stream = trio.SocketStream(sock)
    request = (
        f"GET /numbers?count={count}&pad={pad}&every=0.002 HTTP/1.1\r\nHost: {world.host(sid)}\r\n"
        f"Cookie: agentserver_sandbox={cookie}\r\n\r\n"
    )
    events = bytearray()
    async with stream:
        await stream.send_all(request.encode())
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        with trio.fail_after(60):
            while type(event := reader.next_event()) is not h11.EndOfMessage:
                if event is h11.NEED_DATA:
                    reader.receive_data(await stream.receive_some(4096))
                elif type(event) is h11.Response:
                    assert event.status_code == 200
                elif type(event) is h11.Data:
                    events += event.data
    expected = b"".join(
        f"id: {i}\ndata: {i}{' ' + 'x' * (i * 7919 % (pad + 1))}\n\n".encode() for i in range(count)
    )
    assert len(events) == len(expected)
    assert events == expected


async def test_killed_link_ends_the_stream_goes_offline_and_comes_back(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """Cutting the agent's connection ends the browser's stream, shows `offline`, then the agent
    reconnects and it is `running` again."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    session, sid = agent.session, agent.sandbox_id
    assert session is not None
    may_reconnect = trio.Event()

    async def held(delay: float) -> None:
        await may_reconnect.wait()

    session.wait = held
    async with watch_statuses(world.owner, world.workspace_id) as watch:
        await watch.until(sid, "running")
        async with (
            await world.browser(sid) as browser,
            browser.stream("GET", "/forever") as response,
        ):
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith(":")
            assert session.ws is not None
            session.ws._stream.socket.close()  # the network dies under the agent
            with trio.fail_after(30), pytest.raises(httpx.RemoteProtocolError):
                async for _ in lines:
                    pass
        await watch.until(sid, "offline")
        with trio.fail_after(30):
            await bulk.forever_closed.wait()  # the agent stopped its request to opencode
        may_reconnect.set()
        await watch.until(sid, "running")
    assert session.connections == 2
    async with await world.browser(sid) as browser:
        assert (await browser.get("/small")).json()["size"] == 0


async def test_a_browser_leaving_cancels_the_request_on_the_agent(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """When the browser drops an endless stream, the agent closes its request to opencode and
    the tunnel stays up."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    async with await world.browser(agent.sandbox_id) as browser:
        async with browser.stream("GET", "/forever") as response:
            assert (await anext(response.aiter_lines())).startswith(":")
        with trio.fail_after(30):
            await bulk.forever_closed.wait()
        assert (await browser.get("/small")).status_code == 200
    assert agent.session is not None
    assert agent.session.connections == 1


async def test_deleting_the_sandbox_stops_the_agent_with_status_1(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """Deleting a local sandbox makes its agent stop with a clear message and exit status 1."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    deleted = await world.owner.delete(f"/api/sandboxes/{agent.sandbox_id}")
    assert deleted.status_code == 204
    with trio.fail_after(60):
        await agent.exited.wait()
    assert agent.status == 1
    assert "deleted or its token revoked" in agent.lines[-1]


async def test_replaced_tunnel_closing_late_keeps_the_new_one_running(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """When a second connection replaces the first, the first one's end does not mark the
    sandbox offline."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    session, sid = agent.session, agent.sandbox_id
    assert session is not None
    hub = world.server.deps.hub
    async with watch_statuses(world.owner, world.workspace_id) as watch:
        await watch.until(sid, "running")
        mark = len(watch.seen)
        first = hub.get(sid)
        assert first is not None
        # A second agent with the same credentials (e.g. the laptop woke up on a new network).
        second_agent = trio.Event()

        async def again() -> None:
            from agentserver.agent.connect import Session
            from agentserver.agent.forward import Forwarder

            async with Forwarder(f"http://127.0.0.1:{bulk.port}", None, print) as forwarder:
                twin = Session(session.config, forwarder, lambda line: None)
                twin.wait = stay_away
                nursery.start_soon(twin.run)
                await twin.connected.wait()
                second_agent.set()
                await trio.sleep_forever()

        session.wait = stay_away  # the first agent does not come back
        nursery.start_soon(again)
        await second_agent.wait()
        await hub.wait_finished(first)
        assert hub.get(sid) is not None
        assert hub.get(sid) is not first
        status = (await world.owner.get(f"/api/sandboxes/{sid}")).json()["status"]
        assert status == "running"
        # A later event (another registration) proves every earlier one was read.
        async with httpx.AsyncClient(base_url=world.server.url) as other:
            registered = await other.post(
                "/api/agent/register", json={"code": await world.code(), "name": "marker"}
            )
        await watch.until(registered.json()["sandboxId"], "offline")
        assert (sid, "offline") not in watch.seen[mark:]


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM), Linux ≥ 4.0."""
    Path("/proc/self/clear_refs").write_text("5")


async def stay_away(delay: float) -> None:
    """A reconnect wait that never ends: the agent stays disconnected."""
    await trio.sleep_forever()


def _memory_kib() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def test_100_mb_up_and_down_with_flat_memory(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """A 100 MB download and a 100 MB upload pass through proxy and tunnel intact while the
    peak RSS of the process (server and agent) grows by far less than 100 MB."""
    try:
        reset_peak()
    except OSError:
        pytest.skip("cannot reset the RSS peak (/proc/self/clear_refs)")
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    size = 100 * 1024 * 1024
    async with await world.browser(agent.sandbox_id) as browser:
        await browser.get("/small")  # warm up: connections, pools, code paths
        reset_peak()
        before, _ = _memory_kib()
        got, expected_head = 0, pattern(1 << 20)
        async with browser.stream("GET", f"/bytes?size={size}") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                if got < len(expected_head):
                    assert (
                        chunk[: len(expected_head) - got] == expected_head[got : got + len(chunk)]
                    )
                got += len(chunk)
        assert got == size

        async def upload() -> AsyncIterator[bytes]:
            block = pattern(1 << 20)
            for _ in range(100):
                yield block

        uploaded = await browser.post(
            "/upload", content=upload(), headers={"content-length": str(size)}
        )
        _, peak = _memory_kib()
    digest = hashlib.sha256()
    for _ in range(100):
        digest.update(pattern(1 << 20))
    assert uploaded.json() == {"size": size, "sha256": digest.hexdigest()}
    assert (peak - before) < 40 * 1024, f"peak RSS grew by {(peak - before) // 1024} MiB"


async def test_the_cli_registers_connects_stops_on_ctrl_c_and_exits_1_when_revoked(
    world: TunnelWorld, laptop_opencode: str, tmp_path: Path
) -> None:
    """`agentserver agent connect` as a process: registers and serves opencode, Ctrl-C exits 130
    without a traceback, a rerun reuses the saved credentials, deleting the sandbox exits 1."""
    config = tmp_path / "cfg" / "agent.json"
    argv = [
        sys.executable,
        "-m",
        "agentserver.cli",
        "agent",
        "connect",
        "--config",
        str(config),
        "--opencode-url",
        laptop_opencode,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = await trio.lowlevel.open_process(
        [*argv, "--server", world.server.url, "--code", await world.code(), "--name", "cli"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    assert first.stdout is not None
    seen: list[str] = []
    await read_until(first.stdout, "connected:", seen)
    saved = json.loads(config.read_text())
    assert set(saved) == {"server", "sandboxId", "tunnelToken", "workspaceId", "name"}
    assert config.stat().st_mode & 0o777 == 0o600
    assert config.parent.stat().st_mode & 0o777 == 0o700
    sid = saved["sandboxId"]
    async with await world.browser(sid) as browser:
        assert (await browser.get("/session")).status_code == 200
    first.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        rest = b""
        while chunk := await first.stdout.receive_some(65536):
            rest += chunk
        assert await first.wait() == 130
    assert b"Traceback" not in rest

    second = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO
    )
    assert second.stdout is not None
    await read_until(second.stdout, "connected:", seen)
    assert (await world.owner.delete(f"/api/sandboxes/{sid}")).status_code == 204
    await read_until(second.stdout, "stopped:", seen)
    assert "deleted or its token revoked" in seen[-1]
    with trio.fail_after(30):
        assert await second.wait() == 1


async def test_a_small_answer_leaves_from_the_tunnels_reader_with_our_policy(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small answer that arrives whole is written to the browser by the task that read it
    from the tunnel (RESPOND_NOW), framed and with the sandbox host's framing policy like any
    other; a streamed answer takes the usual way."""
    answered: list[bool] = []
    respond_now = Exchange.respond_now

    def counted(self: Exchange, status: int, headers: Headers, body: bytes) -> bool:
        answered.append(respond_now(self, status, headers, body))
        return answered[-1]

    monkeypatch.setattr(Exchange, "respond_now", counted)
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    async with await world.browser(agent.sandbox_id) as browser:
        for _ in range(10):
            response = await browser.get("/small")
            assert response.status_code == 200
            assert response.json()["size"] == 0
            assert response.headers["content-length"] == str(len(response.content))
            assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert answered == [True] * 10
        async with browser.stream("GET", "/numbers?count=3") as events:
            assert [line async for line in events.aiter_lines() if line.startswith("data:")] == [
                "data: 0",
                "data: 1",
                "data: 2",
            ]
        assert answered == [True] * 10
