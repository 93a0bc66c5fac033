"""The local agent's pieces: target validation, backoff, credentials file, forwarding, the hub."""

from __future__ import annotations

import json
import random
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from agentserver.agent.connect import AgentConfig, Backoff, load_config, save_config, tunnel_url
from agentserver.agent.forward import Forwarder, safe_target
from agentserver.framing import BodyMismatch
from agentserver.proxy.tunnel_upstream import TunnelUpstream
from agentserver.tunnel import StreamLink, StreamResetError, Tunnel, TunnelStream
from agentserver.tunnel.connection import Role
from agentserver.tunnel.hub import Hub
from tests.support.upstream import RecordingUpstream, serve_upstream

CONFIG = AgentConfig(
    server="https://as.example.com",
    sandboxId="abc123",
    tunnelToken="tok",
    workspaceId="w1",
    name="laptop",
)


@pytest.mark.parametrize("target", ["/", "/session?x=1", "/a/b%2F/c", "/pty/1/connect"])
def test_relative_targets_pass(target: str) -> None:
    """Origin-form paths are forwarded unchanged."""
    assert safe_target(target) == target


@pytest.mark.parametrize(
    "target", ["http://evil/", "//evil/x", "/\\evil", "evil", "", "/a b", "/a\r\nHost: x", "*"]
)
def test_absolute_or_odd_targets_are_refused(target: str) -> None:
    """Anything that could name another host (scheme, `//host`, backslash) or smuggle is refused."""
    assert safe_target(target) is None


def test_backoff_is_full_jitter_doubling_to_a_cap_and_resets() -> None:
    """Each wait is uniform in [0, min(60, 2^n)] s; after a reset the ceiling is 1 s again."""
    backoff = Backoff(rng=random.Random(7))
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    waits = [backoff.next() for _ in ceilings]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert max(waits[6:]) > 8  # the ceiling really grew
    backoff.reset()
    assert backoff.next() <= 1
    assert backoff.attempt == 1


def test_config_is_written_private_and_atomically(tmp_path: Path) -> None:
    """The credentials file is 0600 in a 0700 directory, JSON with the five keys, and loads back."""
    path = tmp_path / "home" / ".agentserver" / "agent.json"
    save_config(path, CONFIG)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert set(json.loads(path.read_text())) == {
        "server",
        "sandboxId",
        "tunnelToken",
        "workspaceId",
        "name",
    }
    assert load_config(path) == CONFIG
    assert [p.name for p in path.parent.iterdir()] == ["agent.json"]  # no temp file left


def test_tunnel_url_uses_ws_schemes_and_no_token() -> None:
    """https becomes wss, http ws; the token is never part of the URL."""
    assert tunnel_url(CONFIG) == "wss://as.example.com/api/tunnel/abc123"
    assert tunnel_url(CONFIG, "http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/api/tunnel/abc123"


async def test_authorization_is_replaced_or_removed() -> None:
    """The server's Authorization never reaches opencode: replaced by ours, or dropped."""
    incoming = [
        ("authorization", "Basic c2VydmVy"),
        ("connection", "x-drop"),
        ("x-drop", "1"),
        ("accept", "a"),
        ("accept", "b"),
        ("host", "oc-x.example.com"),
    ]
    async with Forwarder("http://127.0.0.1:1", None, print) as without:
        assert without.headers_for_opencode(incoming) == [("accept", "a"), ("accept", "b")]
    async with Forwarder("http://127.0.0.1:1", "pw", print) as with_password:
        out = with_password.headers_for_opencode(incoming)
    assert out[-1] == ("authorization", "Basic b3BlbmNvZGU6cHc=")  # opencode:pw
    assert [v for n, v in out if n == "authorization"] == ["Basic b3BlbmNvZGU6cHc="]


@asynccontextmanager
async def agent_tunnel(forwarder: Forwarder) -> AsyncIterator[Tunnel]:
    """A server-side tunnel whose agent side forwards with `forwarder`, over memory streams."""
    left, right = trio.testing.memory_stream_pair()
    server = Tunnel(StreamLink(left), role=Role.SERVER)
    agent = Tunnel(StreamLink(right), role=Role.CLIENT, handler=forwarder.handle)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        await nursery.start(server.run)
        yield server
        await server.aclose()
        await agent.aclose()


async def read_all(stream: TunnelStream) -> bytes:
    body = bytearray()
    while chunk := await stream.receive_some():
        body += chunk
    return bytes(body)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


async def test_unreachable_opencode_gets_a_502_page_and_one_status_line() -> None:
    """With nothing at the opencode URL each request gets a clear 502 page; the agent says so
    once."""
    lines: list[str] = []
    async with (
        Forwarder(f"http://127.0.0.1:{closed_port()}", None, lines.append) as forwarder,
        agent_tunnel(forwarder) as server,
    ):
        for _ in range(2):
            stream = await server.open_request("GET", "/", body=False)
            status, headers = await stream.receive_response_head()
            assert status == 502
            assert dict(headers)["content-type"].startswith("text/html")
            assert b"Local opencode is not answering" in await read_all(stream)
    assert len(lines) == 1
    assert lines[0].startswith("local opencode unreachable at http://127.0.0.1:")


async def test_a_bad_target_is_answered_400_without_a_request() -> None:
    """A request target naming another host is refused by the agent with 400."""
    async with (
        Forwarder(f"http://127.0.0.1:{closed_port()}", None, print) as forwarder,
        agent_tunnel(forwarder) as server,
    ):
        stream = await server.open_request("GET", "/\\169.254.169.254/latest", body=False)
        status, _ = await stream.receive_response_head()
        assert status == 400
        assert await read_all(stream) == b"invalid request path"


async def test_hub_replaces_and_closes_and_unregisters_only_its_own() -> None:
    """A second tunnel replaces (and closes) the first; the first's unregister is then a no-op."""
    hub = Hub()
    tunnels = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            left, right = trio.testing.memory_stream_pair()
            server = Tunnel(StreamLink(left), role=Role.SERVER)
            agent = Tunnel(StreamLink(right), role=Role.CLIENT)
            nursery.start_soon(agent.run)
            await nursery.start(server.run)
            tunnels.append((server, agent))
        first, second = tunnels[0][0], tunnels[1][0]
        await hub.register("s", first)
        await hub.register("s", second)
        assert first.closed
        assert hub.get("s") is second
        assert hub.unregister("s", first) is False
        assert hub.get("s") is second
        assert await hub.close("s") is True
        assert hub.get("s") is None  # closed tunnels are never handed out
        assert hub.unregister("s", second) is True
        hub.release_lock("s")
        for server, agent in tunnels:
            await server.aclose()
            await agent.aclose()


@asynccontextmanager
async def laptop_tunnel() -> AsyncIterator[tuple[Tunnel, RecordingUpstream]]:
    """A server-side tunnel to an agent whose "opencode" is the recording h11 server."""
    async with trio.open_nursery() as nursery:
        laptop: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
        async with (
            Forwarder(f"http://127.0.0.1:{laptop.port}", None, print) as forwarder,
            agent_tunnel(forwarder) as server,
        ):
            yield server, laptop
        nursery.cancel_scope.cancel()


async def test_the_agent_frames_a_body_by_its_own_length() -> None:
    """A Content-Length the server declared frames the body to opencode even when the header
    list also says chunked and lists Content-Length in Connection."""
    headers = [
        ("content-length", "3"),
        ("transfer-encoding", "chunked"),
        ("connection", "content-length, host"),
    ]
    async with laptop_tunnel() as (server, laptop):
        stream = await server.open_request("POST", "/echo", headers)
        await stream.send_all(b"abc")
        await stream.send_eof()
        status, _ = await stream.receive_response_head()
        assert (status, await read_all(stream)) == (200, b"abc")
    (seen,) = laptop.requests
    assert seen.header("content-length") == ["3"]
    assert seen.header("transfer-encoding") == []


async def test_a_body_longer_than_declared_is_reset_before_opencode_has_it() -> None:
    """More bytes than the declared length reset the stream; opencode never gets a complete
    request, and the next request arrives as itself."""
    async with laptop_tunnel() as (server, laptop):
        stream = await server.open_request("POST", "/echo", [("content-length", "3")])
        await stream.send_all(b"abcdef")
        await stream.send_eof()
        with pytest.raises(StreamResetError):
            await stream.receive_response_head()
        follow = await server.open_request("GET", "/json", body=False)
        status, _ = await follow.receive_response_head()
        assert status == 200
    assert [r.target for r in laptop.requests] == ["/json"]


async def test_the_proxy_resets_a_tunnel_request_whose_body_does_not_match() -> None:
    """TunnelUpstream raises BodyMismatch for a body longer than its length and the laptop
    never sees the request complete."""
    async with laptop_tunnel() as (server, laptop):
        upstream = TunnelUpstream(server)

        async def body() -> AsyncIterator[bytes]:
            for part in (b"abc", b"def"):
                yield part

        with pytest.raises(BodyMismatch):
            await upstream.request(b"POST", b"/echo", [(b"host", b"h")], body(), length=3)
        response = await upstream.request(b"GET", b"/json", [], body(), length=0)
        assert response.status == 200
        await response.aclose()
    assert [r.target for r in laptop.requests] == ["/json"]
