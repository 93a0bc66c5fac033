"""Agents' tunnels at the front door (proxy/tunnel_door.py) and through the quart route: the
same checks and refusals either way, and a tunnel counts as busy for the connection cap.

Raw sockets against the real server. A path with a percent-escape is not one the front door
takes, so it reaches hypercorn and the quart route with the same sandbox id.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from agentserver.sandboxes.tunnel_session import TunnelSessions
from agentserver.settings import Settings
from agentserver.tunnel import Role, Tunnel
from agentserver.tunnel.handshake import accept_key, new_key
from agentserver.tunnel.version import HEADER, PROTOCOL
from agentserver.tunnel.websocket import WebSocket
from tests.conftest import Server, make_settings
from tests.support.accounts import owner_of_workspace
from tests.support.workspace_events import watch_statuses

GUARD = 15


@pytest.fixture
def server_settings(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The `server` fixture's settings; options through indirect parametrize."""
    return make_settings(db_url, tmp_path / "data", **getattr(request, "param", {}))


async def registered(server: Server) -> tuple[str, str]:
    """A local sandbox's id and tunnel token."""
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        code = (await owner.post(f"/api/workspaces/{workspace['id']}/agent-code")).json()["code"]
        async with httpx.AsyncClient(base_url=server.url) as agent:
            answer = await agent.post("/api/agent/register", json={"code": code, "name": "x"})
    body = answer.json()
    return body["sandboxId"], body["tunnelToken"]


def upgrade(port: int, target: str, key: bytes, headers: list[str]) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: localhost:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_answer(stream: trio.SocketStream) -> tuple[int, dict[bytes, bytes], bytes, bytes]:
    """Status, headers, body (by Content-Length) and whatever followed the head."""
    data = b""
    with trio.fail_after(GUARD):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {
            n.strip().lower(): v.strip() for n, _, v in (x.partition(b":") for x in lines[1:])
        }
        length = int(headers.get(b"content-length", b"0"))
        while len(rest) < length:
            chunk = await stream.receive_some(65536)
            assert chunk
            rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length], rest[length:]


async def dial(
    server: Server, target: str, headers: list[str]
) -> tuple[int, dict[bytes, bytes], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(upgrade(server.port, target, new_key(), headers))
        status, answer_headers, body, _ = await read_answer(stream)
    return status, answer_headers, body


def quart_path(sandbox_id: str) -> str:
    """The same route with its first character escaped: not the front door's to take."""
    return f"/api/tunnel/%{ord(sandbox_id[0]):02X}{sandbox_id[1:]}"


CASES = {
    "token in the URL": (400, "?token={token}", []),
    "no Authorization": (401, "", []),
    "a wrong token": (401, "", ["Authorization: Bearer not-the-token"]),
    "another protocol": (426, "", ["Authorization: Bearer {token}", f"{HEADER}: {PROTOCOL + 1}"]),
    "compression": (
        400,
        "",
        ["Authorization: Bearer {token}", "Sec-WebSocket-Extensions: permessage-deflate"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_both_doors_refuse_a_tunnel_with_the_same_status_and_error(
    server: Server, case: str
) -> None:
    """Each refusal has the same status and JSON error from the front door and from the quart
    route (which hypercorn serves: its answers carry its own headers, the door's do not)."""
    status, query, headers = CASES[case]
    sid, token = await registered(server)
    filled = [h.format(token=token) for h in headers]
    door = await dial(server, f"/api/tunnel/{sid}{query.format(token=token)}", filled)
    route = await dial(server, quart_path(sid) + query.format(token=token), filled)
    assert door[0] == route[0] == status
    assert json.loads(door[2]) == json.loads(route[2])
    assert b"date" not in door[1]
    assert b"date" in route[1]


async def test_both_doors_let_a_good_tunnel_request_in(server: Server) -> None:
    """A valid request gets a 101 with the right accept from the door and from the route."""
    sid, token = await registered(server)
    for target in (f"/api/tunnel/{sid}", quart_path(sid)):
        key = new_key()
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                upgrade(server.port, target, key, [f"Authorization: Bearer {token}"])
            )
            status, headers, _, _ = await read_answer(stream)
        assert status == 101
        assert headers[b"sec-websocket-accept"] == accept_key(key)


@asynccontextmanager
async def door_tunnel(server: Server, sid: str, token: str) -> AsyncIterator[Tunnel]:
    """An agent's tunnel through the front door, on our own link as the client."""
    key = new_key()
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(
        upgrade(server.port, f"/api/tunnel/{sid}", key, [f"Authorization: Bearer {token}"])
    )
    status, _, _, rest = await read_answer(stream)
    assert status == 101
    link = WebSocket(stream, client=True, max_message=1 << 20, buffered=rest)
    async with trio.open_nursery() as nursery:
        tunnel = Tunnel(link, role=Role.CLIENT)
        await nursery.start(tunnel.run)
        yield tunnel
        await tunnel.aclose()


async def idle_connection(server: Server) -> trio.SocketStream:
    """A keep-alive connection that was answered once and now waits for its next request."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(
        f"GET /healthz HTTP/1.1\r\nHost: localhost:{server.port}\r\n\r\n".encode()
    )
    status, _, _, _ = await read_answer(stream)
    assert status == 200
    return stream


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.fail_after(GUARD):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return True
            except trio.BrokenResourceError:
                return True


@pytest.mark.parametrize("server_settings", [{"max_connections": "3"}], indirect=True)
async def test_a_tunnel_is_never_closed_to_make_room(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --max-connections 3 (one of them a dashboard's event stream), a tunnel (the oldest
    of the other two) and an idle connection, a newcomer is served by closing the idle one;
    the tunnel stays up."""
    monkeypatch.setattr(TunnelSessions, "probe_health", False)  # this agent answers nothing
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        code = (await owner.post(f"/api/workspaces/{workspace['id']}/agent-code")).json()["code"]
        answer = await owner.post("/api/agent/register", json={"code": code, "name": "x"})
        sid, token = answer.json()["sandboxId"], answer.json()["tunnelToken"]
        async with (
            watch_statuses(owner, workspace["id"]) as watch,  # the owner's one connection
            door_tunnel(server, sid, token) as tunnel,
        ):
            await watch.until(sid, "running")
            idle = await idle_connection(server)
            await trio.testing.wait_all_tasks_blocked()
            newcomer = await idle_connection(server)
            assert await closed_by_server(idle)
            assert not tunnel.closed
            assert server.deps.hub.get(sid) is not None
            await newcomer.aclose()
            await idle.aclose()
