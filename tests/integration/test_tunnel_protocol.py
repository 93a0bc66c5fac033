"""Agents and servers of different tunnel protocols refuse each other with a clear message."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from agentserver import __version__
from agentserver.agent import compat
from agentserver.agent import connect as connect_module
from agentserver.agent.connect import AgentConfig, connect, save_config
from agentserver.tunnel import Tunnel, WebSocketLink
from agentserver.tunnel.connection import Role
from agentserver.tunnel.version import HEADER, PROTOCOL
from tests.conftest import Server
from tests.support.accounts import owner_of_workspace


async def registered(server: Server) -> tuple[str, str]:
    """A local sandbox's id and tunnel token."""
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        code = (await owner.post(f"/api/workspaces/{workspace['id']}/agent-code")).json()["code"]
        async with httpx.AsyncClient(base_url=server.url) as agent:
            answer = await agent.post("/api/agent/register", json={"code": code, "name": "x"})
    body = answer.json()
    return body["sandboxId"], body["tunnelToken"]


async def dial(server: Server, sandbox_id: str, token: str, protocol: str | None) -> bytes:
    """Open the tunnel as an agent would, sending `protocol` (or no header); b"" when it came
    up, else the refusal's status and body."""
    headers = [(b"authorization", f"Bearer {token}".encode())]
    if protocol is not None:
        headers.append((HEADER.lower().encode(), protocol.encode()))
    url = f"ws://127.0.0.1:{server.port}/api/tunnel/{sandbox_id}"
    try:
        async with (
            trio_websocket.open_websocket_url(url, extra_headers=headers) as ws,
            trio.open_nursery() as nursery,
        ):
            tunnel = Tunnel(WebSocketLink(ws), role=Role.CLIENT)
            await nursery.start(tunnel.run)
            await tunnel.aclose()
    except trio_websocket.ConnectionRejected as rejected:
        return b"%d %s" % (rejected.status_code, rejected.body or b"")
    return b""


async def test_the_server_refuses_another_protocol_with_426(server: Server) -> None:
    sid, token = await registered(server)
    newer = await dial(server, sid, token, str(PROTOCOL + 1))
    assert newer.startswith(b"426 ")
    assert b"tunnel protocol %d" % (PROTOCOL + 1) in newer
    assert (await dial(server, sid, token, "not-a-number")).startswith(b"426 ")


async def test_the_same_protocol_and_an_agent_that_predates_it_are_accepted(
    server: Server,
) -> None:
    sid, token = await registered(server)
    assert await dial(server, sid, token, str(PROTOCOL)) == b""
    assert await dial(server, sid, token, None) == b""  # protocol 1, before the header


async def test_an_agent_of_another_protocol_stops_before_spending_its_code(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`agent connect` asks first: it exits 1 naming the download, and the code still works."""
    monkeypatch.setattr(compat, "PROTOCOL", PROTOCOL + 1)
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        code = (await owner.post(f"/api/workspaces/{workspace['id']}/agent-code")).json()["code"]
        said: list[str] = []
        status = await connect(
            server=server.url,
            code=code,
            name="old",
            config_path=tmp_path / "agent.json",
            say=said.append,
        )
        assert status == 1
        assert any("/download/agentserver-agent.pyz" in line for line in said), said
        async with httpx.AsyncClient(base_url=server.url) as agent:
            spent = await agent.post("/api/agent/register", json={"code": code, "name": "new"})
        assert spent.status_code == 201


async def saved_registration(server: Server, path: Path) -> None:
    """An agent registered with `server` earlier: its credentials saved at `path`."""
    sid, token = await registered(server)
    save_config(path, AgentConfig(server.url, sid, token, "w", "laptop"))


async def test_a_426_on_the_tunnel_stops_the_agent_naming_both_versions(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server speaks another protocol than when the agent started (or did not say at the
    start): the tunnel's 426 stops `agent connect` at once with exit status 1 and one line
    naming both versions and the server's download; it does not retry."""
    path = tmp_path / "agent.json"
    await saved_registration(server, path)
    monkeypatch.setattr(compat, "PROTOCOL", PROTOCOL + 1)  # the header and the question agree
    monkeypatch.setattr(connect_module, "check_server", skipped_check)
    said: list[str] = []
    with trio.fail_after(20):
        status = await connect(config_path=path, say=said.append)
    assert status == 1
    assert sum(line.startswith("connecting to") for line in said) == 1, said
    stopped = said[-1]
    assert stopped.startswith("stopped: this agent (agentserver"), said
    assert f"agentserver {__version__}, tunnel protocol {PROTOCOL + 1})" in stopped
    assert f"agentserver {__version__} (tunnel protocol {PROTOCOL})" in stopped
    assert f"curl -fLO {server.url}/download/agentserver-agent.pyz" in stopped


async def skipped_check(server: str, client: httpx.AsyncClient | None = None) -> None:
    """The question before connecting got no answer (the server was restarting)."""
    await trio.lowlevel.checkpoint()
