"""Request framing through the real server: what an agent parsing with h11 sees is exactly what
the browser sent, whatever the browser says in Content-Length, Transfer-Encoding and
Connection, on the fast path, on hypercorn (HTTP/1.1 and HTTP/2) and through a tunnel.

The attacks glue a request prefix onto the next request on a pooled upstream connection: the
prefix ends in an open header line, so the victim's request line and headers (its injected
Authorization included) would become part of the attacker's request.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentserver.sandboxes.tunnel_session import TunnelSessions
from tests.conftest import Server
from tests.integration.test_proxy_front import Wire, header
from tests.support.accounts import owner_of_workspace
from tests.support.proxy_world import World
from tests.support.tunnel_world import TunnelWorld
from tests.support.upstream import RecordingUpstream, serve_upstream

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Glue: "


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


async def hypercorn_wire(port: int) -> Wire:
    """A connection the front door already handed to hypercorn (a main-site request went
    first), so every later request on it is parsed by hypercorn's h11."""
    client = Wire(await trio.open_tcp_stream("127.0.0.1", port))
    client.expect(b"GET")
    await client.send(f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    response, _ = await client.response()
    assert response.status_code == 200
    return client


async def open_wire(port: int, path: str) -> Wire:
    """A raw connection whose sandbox requests take `path`: the front door's fast path (if the
    request is plain) or hypercorn."""
    if path == "hypercorn":
        return await hypercorn_wire(port)
    return Wire(await trio.open_tcp_stream("127.0.0.1", port))


async def read_to_end(client: Wire) -> bytes:
    rest = b""
    while chunk := await client.stream.receive_some(65536):
        rest += chunk
    return rest


def connection_unframes(host: str, token: str) -> bytes:
    """Trigger 1: a GET (a guest may send one) whose Connection list names its Content-Length."""
    return (
        f"GET /echo HTTP/1.1\r\nHost: {host}\r\nCookie: agentserver_sandbox={token}\r\n"
        f"Content-Length: {len(SMUGGLED)}\r\nConnection: content-length\r\n\r\n"
    ).encode() + SMUGGLED


def both_framings(host: str, token: str) -> bytes:
    """Trigger 2: `Content-Length: 0` and a chunked body carrying the prefix."""
    return (
        f"GET /echo HTTP/1.1\r\nHost: {host}\r\nCookie: agentserver_sandbox={token}\r\n"
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + chunked(SMUGGLED)


# -- the TCP upstream: fast path and hypercorn --------------------------------------------------


@pytest.mark.parametrize("path", ["fast", "hypercorn"])
async def test_connection_cannot_remove_content_length(world: World, path: str) -> None:
    """A body whose Content-Length is listed in Connection reaches the agent as that request's
    body, and the next request on the pooled connection arrives as itself."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await open_wire(world.server.port, path)
    client.expect(b"GET")
    await client.send(connection_unframes(world.host(sid), token))
    response, body = await client.response()
    assert (response.status_code, body) == (200, SMUGGLED)
    async with world.sub(sid, token) as victim:
        answer = await victim.get("/json")
    assert answer.json() == {"ok": True, "path": "/json"}
    assert [(r.target, r.body) for r in world.upstream.requests] == [
        ("/echo", SMUGGLED),
        ("/json", b""),
    ]
    assert world.upstream.seen("/echo")[0].header("content-length") == [str(len(SMUGGLED))]


@pytest.mark.parametrize("path", ["fresh", "hypercorn"])
async def test_both_framings_are_refused_and_the_connection_closed(world: World, path: str) -> None:
    """Content-Length with Transfer-Encoding gets a 400 and the end of the connection; the
    agent never sees it, and the next request arrives as itself."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await open_wire(world.server.port, path if path == "hypercorn" else "fast")
    client.expect(b"GET")
    await client.send(both_framings(world.host(sid), token))
    response, _ = await client.response()
    assert response.status_code == 400
    assert header(response, b"connection") == b"close"
    assert await read_to_end(client) == b""
    async with world.sub(sid, token) as victim:
        answer = await victim.get("/json")
    assert answer.json() == {"ok": True, "path": "/json"}
    assert [r.target for r in world.upstream.requests] == ["/json"]


async def test_a_chunked_upload_is_framed_chunked_by_the_proxy(world: World) -> None:
    """A chunked upload (hypercorn) reaches the agent whole, chunked by the proxy's writer."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await hypercorn_wire(world.server.port)
    client.expect(b"POST")
    await client.send(
        (
            f"POST /echo HTTP/1.1\r\nHost: {world.host(sid)}\r\n"
            f"Origin: http://{world.host(sid)}\r\nCookie: agentserver_sandbox={token}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + chunked(b"hello world")
    )
    response, body = await client.response()
    assert (response.status_code, body) == (200, b"hello world")
    seen = world.upstream.seen("/echo")[0]
    assert seen.header("transfer-encoding") == ["chunked"]
    assert seen.header("content-length") == []


@pytest.mark.parametrize("ending", ["refused", "connection-close"])
async def test_bytes_after_a_closing_request_never_take_the_server_down(
    world: World, ending: str
) -> None:
    """A request whose answer ends the connection (a framing refusal, or the client's own
    `Connection: close`) followed by more bytes ends that connection only: hypercorn's error
    answer racing the app's answer must not take the server down."""
    sid = await world.sandbox()
    token = await world.open(sid)
    port = world.server.port
    closing = f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    request = both_framings(world.host(sid), token) if ending == "refused" else closing.encode()
    for _ in range(30):
        client = await hypercorn_wire(port)
        await client.send(request + b"GARBAGE\r\n\r\n" * 3)
        with contextlib.suppress(trio.BrokenResourceError):
            await read_to_end(client)
        await client.stream.aclose()
    assert (await world.owner.get("/healthz")).status_code == 200


# -- any framing: Hypothesis -------------------------------------------------------------------

# Content-Length values: the body's real size, around it, or not a number at all.
LENGTHS = ["exact", "0", "short", "long", "abc", "+5", ""]
CODINGS = ["chunked", "chunked", "identity", "gzip, chunked", "chunked, identity", "Chunked"]
TOKENS = ["content-length", "transfer-encoding", "host", "close", "keep-alive", "cookie", "x-a"]
GLUE = SMUGGLED
WHOLE = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@st.composite
def attacks(draw: st.DrawFn) -> dict[str, object]:
    """One browser request with any mix of framing fields and Connection options, whose
    body bytes hold a request (or a prefix to glue onto the next one)."""
    return {
        "path": draw(st.sampled_from(["fast", "hypercorn"])),
        "method": draw(st.sampled_from(["GET", "POST"])),
        "lengths": draw(st.lists(st.sampled_from(LENGTHS), max_size=2)),
        "codings": draw(st.lists(st.sampled_from(CODINGS), max_size=2)),
        "tokens": draw(st.lists(st.sampled_from(TOKENS), max_size=3)),
        "chunk_encoded": draw(st.booleans()),
        "payload": draw(st.sampled_from([GLUE, WHOLE])),
    }


# The two reproduced triggers, always among the examples.
CONNECTION_UNFRAMES = {
    "path": "fast",
    "method": "GET",
    "lengths": ["exact"],
    "codings": [],
    "tokens": ["content-length"],
    "chunk_encoded": False,
    "payload": GLUE,
}
BOTH_FRAMINGS = {
    "path": "hypercorn",
    "method": "GET",
    "lengths": ["0"],
    "codings": ["chunked"],
    "tokens": [],
    "chunk_encoded": True,
    "payload": WHOLE,
}


def attack_bytes(attack: dict[str, object], host: str, token: str, n: int) -> bytes:
    payload = attack["payload"]
    assert isinstance(payload, bytes)
    body = chunked(payload) if attack["chunk_encoded"] else payload
    sizes = {"exact": len(body), "short": len(body) - 3, "long": len(body) + 5}
    lines = [
        f"{attack['method']} /echo?n={n} HTTP/1.1",
        f"Host: {host}",
        f"Cookie: agentserver_sandbox={token}",
        f"Origin: http://{host}",
    ]
    lengths: list[str] = attack["lengths"]  # type: ignore[assignment]
    codings: list[str] = attack["codings"]  # type: ignore[assignment]
    tokens: list[str] = attack["tokens"]  # type: ignore[assignment]
    lines += [f"Content-Length: {sizes.get(v, v)}" for v in lengths]
    lines += [f"Transfer-Encoding: {v}" for v in codings]
    if tokens:
        lines.append("Connection: " + ", ".join(tokens))
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


async def test_no_framing_lets_the_agent_see_more_requests_than_the_browser_sent(
    world: World,
) -> None:
    """Whatever Content-Length, Transfer-Encoding and Connection a request carries, on either
    server path, the agent sees at most that request, never one hidden in its body, and the
    next browser request on the pooled connection arrives as itself."""
    sid = await world.sandbox()
    token = await world.open(sid)
    host = world.host(sid)
    numbers = itertools.count()

    async def one(attack: dict[str, object]) -> None:
        n = next(numbers)
        with trio.fail_after(30):  # a hang guard, not a timing assertion
            client = await open_wire(world.server.port, str(attack["path"]))
            await client.stream.send_all(attack_bytes(attack, host, token, n))
            await client.stream.send_eof()
            with contextlib.suppress(trio.BrokenResourceError):
                while await client.stream.receive_some(65536):
                    pass
            await client.stream.aclose()
            async with world.sub(sid, token) as victim:
                answer = await victim.get(f"/json?n={n}", headers={"X-Victim": "1"})
        assert answer.json() == {"ok": True, "path": "/json"}
        mine = [r for r in world.upstream.requests if r.target.endswith(f"?n={n}")]
        assert world.upstream.seen("/smuggled") == []
        assert [r.target for r in mine].count(f"/echo?n={n}") <= 1
        victims = [r for r in mine if r.target == f"/json?n={n}"]
        assert [r.header("x-victim") for r in victims] == [["1"]]

    @settings(max_examples=100, deadline=None, database=None)
    @given(attacks())
    @example(CONNECTION_UNFRAMES)
    @example(BOTH_FRAMINGS)
    def check(attack: dict[str, object]) -> None:
        trio.from_thread.run(one, attack)

    await trio.to_thread.run_sync(check)


# -- HTTP/2 -----------------------------------------------------------------------------------


async def test_an_http2_body_without_a_length_is_forwarded(world: World) -> None:
    """An HTTP/2 upload with no Content-Length (a streamed body) reaches the agent whole."""
    sid = await world.sandbox()
    token = await world.open(sid)
    parts = [b"first part, ", b"second part, ", b"last part"]

    async def stream() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with httpx.AsyncClient(
        base_url=world.server.url,
        http1=False,
        http2=True,
        headers={
            "Host": world.host(sid),
            "Cookie": f"agentserver_sandbox={token}",
            "Origin": f"http://{world.host(sid)}",
        },
    ) as client:
        response = await client.post("/echo", content=stream())
        assert response.http_version == "HTTP/2"
    assert (response.status_code, response.content) == (200, b"".join(parts))
    assert world.upstream.seen("/echo")[0].body == b"".join(parts)


async def test_an_http2_get_without_a_body_stays_without_one(world: World) -> None:
    """An HTTP/2 GET reaches the agent with no framing fields at all, as a plain GET."""
    sid = await world.sandbox()
    token = await world.open(sid)
    async with httpx.AsyncClient(
        base_url=world.server.url,
        http1=False,
        http2=True,
        headers={"Host": world.host(sid), "Cookie": f"agentserver_sandbox={token}"},
    ) as client:
        response = await client.get("/json")
    assert response.json() == {"ok": True, "path": "/json"}
    seen = world.upstream.seen("/json")[0]
    assert seen.header("content-length") == seen.header("transfer-encoding") == []


# -- through a tunnel -------------------------------------------------------------------------


@pytest.fixture
async def tunnel(server: Server, tmp_path: Path) -> AsyncIterator[TunnelWorld]:
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        yield TunnelWorld(server, owner, workspace["id"], tmp_path)


@pytest.fixture
async def laptop(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> RecordingUpstream:
    """The laptop's "opencode": the recording h11 server, reached by the agent."""
    # The tests read the laptop's requests in order: no health probes among them.
    monkeypatch.setattr(TunnelSessions, "probe_health", False)
    up: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    return up


async def test_tunnel_connection_cannot_remove_content_length(
    tunnel: TunnelWorld, laptop: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """Through a tunnel, a Content-Length listed in Connection still frames the body: the
    laptop sees that one request with its body, then the next request as itself."""
    agent = await tunnel.start_agent(nursery, f"http://127.0.0.1:{laptop.port}")
    sid = agent.sandbox_id
    token = await tunnel.cookie(sid)
    client = await open_wire(tunnel.server.port, "fast")
    client.expect(b"GET")
    await client.send(connection_unframes(tunnel.host(sid), token))
    response, body = await client.response()
    assert (response.status_code, body) == (200, SMUGGLED)
    async with await tunnel.browser(sid) as victim:
        answer = await victim.get("/json")
    assert answer.json() == {"ok": True, "path": "/json"}
    assert [(r.target, r.body) for r in laptop.requests] == [("/echo", SMUGGLED), ("/json", b"")]
    assert laptop.requests[0].header("content-length") == [str(len(SMUGGLED))]


async def test_tunnel_both_framings_are_refused(
    tunnel: TunnelWorld, laptop: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """Through a tunnel too, both framings together are a 400 the laptop never sees."""
    agent = await tunnel.start_agent(nursery, f"http://127.0.0.1:{laptop.port}")
    sid = agent.sandbox_id
    token = await tunnel.cookie(sid)
    client = await open_wire(tunnel.server.port, "hypercorn")
    client.expect(b"GET")
    await client.send(both_framings(tunnel.host(sid), token))
    response, _ = await client.response()
    assert response.status_code == 400
    assert await read_to_end(client) == b""
    async with await tunnel.browser(sid) as victim:
        answer = await victim.get("/json")
    assert answer.json() == {"ok": True, "path": "/json"}
    assert [r.target for r in laptop.requests] == ["/json"]


async def test_tunnel_chunked_upload_reaches_the_laptop_whole(
    tunnel: TunnelWorld, laptop: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """A chunked upload through a tunnel arrives whole, framed by the agent (chunked)."""
    agent = await tunnel.start_agent(nursery, f"http://127.0.0.1:{laptop.port}")
    sid = agent.sandbox_id
    token = await tunnel.cookie(sid)
    client = await hypercorn_wire(tunnel.server.port)
    client.expect(b"POST")
    await client.send(
        (
            f"POST /echo HTTP/1.1\r\nHost: {tunnel.host(sid)}\r\n"
            f"Origin: http://{tunnel.host(sid)}\r\nCookie: agentserver_sandbox={token}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + chunked(b"hello tunnel")
    )
    response, body = await client.response()
    assert (response.status_code, body) == (200, b"hello tunnel")
    assert laptop.requests[0].header("transfer-encoding") == ["chunked"]
    assert laptop.requests[0].header("content-length") == []
