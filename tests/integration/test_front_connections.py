"""The listener's connection handling on both paths: a cap on open connections, keep-alive and
head timeouts, `Connection: close`, bare-LF heads, and answers sent before a request's body.

Raw sockets against the real server; limits are set low through settings. A timeout is shown
by the server closing the socket, never by a clock: `fail_after` only guards against a hang.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from agentserver.settings import Settings
from tests.conftest import Server, make_settings, start_server
from tests.support.proxy_world import World

GUARD = 15  # seconds before a test that expects the server to act calls it a hang


@pytest.fixture
def server_settings(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The `server` (and `world`) fixture's settings; options through indirect parametrize."""
    return make_settings(db_url, tmp_path / "data", **getattr(request, "param", {}))


async def serve_with(nursery: trio.Nursery, db_url: str, tmp_path: Path, **options: str) -> Server:
    return await start_server(nursery, make_settings(db_url, tmp_path / "data", **options))


class Conn:
    """One raw client connection; responses are read with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, server: Server) -> Conn:
        return cls(await trio.open_tcp_stream("127.0.0.1", server.port))

    async def request(self, raw: bytes, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
        """Send `raw` and read the response to it."""
        await self.stream.send_all(raw)
        return await self.response(method)

    async def response(self, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        self.h11.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        self.h11.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = b""
        with trio.fail_after(GUARD):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return head, body
                else:
                    raise AssertionError(f"unexpected {event!r}")

    async def closed_by_server(self) -> bool:
        """True once the server ends the connection (EOF or reset), reading away what is left;
        fails the test (through the guard) if it never does."""
        with trio.fail_after(GUARD):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True


def main_get(server: Server, path: str = "/healthz", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost:{server.port}\r\n{extra}\r\n".encode()


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for n, v in response.headers if n == name), None)


async def test_main_host_answer_before_the_body_closes_the_connection(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A main-host answer sent before the request body came says `Connection: close` and the
    server closes: the body and a next request sent after it never hang."""
    server = await serve_with(nursery, db_url, tmp_path)
    conn = await Conn.open(server)
    head = (
        f"POST /api/workspaces/x/agent-code HTTP/1.1\r\nHost: localhost:{server.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    )
    response, _ = await conn.request(head.encode(), b"POST")
    assert response.status_code == 401
    assert header(response, b"connection") == b"close"
    with contextlib.suppress(trio.BrokenResourceError):  # already closed: as good
        await conn.stream.send_all(b"0123456789" + main_get(server))
    assert await conn.closed_by_server()


async def test_main_host_connection_close_is_honoured(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A main-host request with `Connection: close` is answered and the server then closes."""
    server = await serve_with(nursery, db_url, tmp_path)
    conn = await Conn.open(server)
    response, _ = await conn.request(main_get(server, extra="Connection: close\r\n"))
    assert response.status_code == 200
    assert header(response, b"connection") == b"close"
    assert await conn.closed_by_server()


async def test_main_host_keep_alive_connection_is_closed_when_idle(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With --keep-alive-timeout 1s, a main-host connection idle after a response is closed."""
    server = await serve_with(nursery, db_url, tmp_path, keep_alive_timeout="1s")
    conn = await Conn.open(server)
    response, _ = await conn.request(main_get(server))
    assert response.status_code == 200
    assert await conn.closed_by_server()


async def test_a_head_that_never_ends_is_closed_at_the_keep_alive_timeout(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A request head that never completes (no blank line) on a new connection is closed."""
    server = await serve_with(nursery, db_url, tmp_path, keep_alive_timeout="1s")
    conn = await Conn.open(server)
    await conn.stream.send_all(
        f"GET /healthz HTTP/1.1\r\nHost: localhost:{server.port}\r\n".encode()
    )
    assert await conn.closed_by_server()


async def test_a_second_head_that_never_ends_is_closed_on_the_hypercorn_path(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """After a main-host response, an unfinished next head is closed at the keep-alive timeout."""
    server = await serve_with(nursery, db_url, tmp_path, keep_alive_timeout="1s")
    conn = await Conn.open(server)
    response, _ = await conn.request(main_get(server))
    assert response.status_code == 200
    await conn.stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: ")
    assert await conn.closed_by_server()


@pytest.mark.parametrize(
    "raw",
    [
        "GET /healthz HTTP/1.1\nHost: localhost:{port}\n\n",
        "GET /healthz HTTP/1.1\r\nHost: localhost:{port}\n\r\n",
        "GET / HTTP/1.1\nHost: oc-abc.localhost:{port}\n\n",
    ],
    ids=["all-lf", "one-lf", "sandbox-host"],
)
async def test_a_bare_lf_head_gets_a_400_at_once(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, raw: str
) -> None:
    """A head whose lines end with a bare LF is answered 400 and closed (no 75 s wait)."""
    server = await serve_with(nursery, db_url, tmp_path)
    conn = await Conn.open(server)
    response, body = await conn.request(raw.format(port=server.port).encode())
    assert response.status_code == 400
    assert header(response, b"connection") == b"close"
    assert b"CRLF" in body
    assert await conn.closed_by_server()


async def test_a_bare_lf_in_a_later_piece_of_the_head_gets_a_400(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A head sent in two pieces, the second with a bare LF, is answered 400 as well."""
    server = await serve_with(nursery, db_url, tmp_path)
    conn = await Conn.open(server)
    await conn.stream.send_all(b"GET /healthz HTTP/1.1\r")
    await trio.testing.wait_all_tasks_blocked()  # the server has read the first piece
    response, _ = await conn.request(f"\nHost: localhost:{server.port}\n\n".encode())
    assert response.status_code == 400
    assert await conn.closed_by_server()


async def test_at_the_cap_the_connection_idle_longest_is_closed_for_a_newcomer(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With --max-connections 2 and both idle, a third connection is served and the one idle
    longest is closed; the other keeps working."""
    server = await serve_with(nursery, db_url, tmp_path, max_connections="2")
    first, second = await Conn.open(server), await Conn.open(server)
    for conn in (first, second):
        response, _ = await conn.request(main_get(server))
        assert response.status_code == 200
    await trio.testing.wait_all_tasks_blocked()  # both are waiting for their next request
    third = await Conn.open(server)
    response, _ = await third.request(main_get(server))
    assert response.status_code == 200
    assert await first.closed_by_server()
    response, _ = await second.request(main_get(server))
    assert response.status_code == 200


async def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_a_503(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With --max-connections 1 and that connection mid-request, a new one is told 503 and
    closed; the busy one is not disturbed."""
    server = await serve_with(nursery, db_url, tmp_path, max_connections="1")
    busy = await Conn.open(server)
    body = b'{"username": "a", "password": "correct-horse"}'
    head = (
        f"POST /api/auth/login HTTP/1.1\r\nHost: localhost:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await busy.stream.send_all(head.encode())  # the body is still to come
    await trio.testing.wait_all_tasks_blocked()
    refused = await Conn.open(server)
    response, answer = await refused.request(main_get(server))
    assert response.status_code == 503
    assert header(response, b"retry-after") == b"1"
    assert b'"busy"' in answer
    assert await refused.closed_by_server()
    await busy.stream.send_all(body)
    response, _ = await busy.response(b"POST")
    assert response.status_code == 401  # no such user: answered, not cut off


async def test_fast_path_answer_before_the_body_says_connection_close(world: World) -> None:
    """A sandbox-host answer sent before the request body came (no cookie: 401) says
    `Connection: close`, and the server closes."""
    sid = await world.sandbox()
    conn = await Conn.open(world.server)
    head = (
        f"POST /session HTTP/1.1\r\nHost: {world.host(sid)}\r\nAccept: application/json\r\n"
        "Content-Length: 10\r\n\r\n"
    )
    response, _ = await conn.request(head.encode(), b"POST")
    assert response.status_code == 401
    assert header(response, b"connection") == b"close"
    assert await conn.closed_by_server()


def sandbox_get(world: World, sandbox_id: str, token: str) -> bytes:
    return (
        f"GET /json HTTP/1.1\r\nHost: {world.host(sandbox_id)}\r\n"
        f"Cookie: agentserver_sandbox={token}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("server_settings", [{"max_connections": "2"}], indirect=True)
async def test_fast_path_connections_idle_longest_make_room_too(world: World) -> None:
    """With --max-connections 2 and two idle sandbox-host connections, a third is served and
    the one idle longest is closed."""
    sid = await world.sandbox()
    token = await world.open(sid)
    await world.owner.aclose()  # its idle connection would otherwise be the oldest
    await trio.testing.wait_all_tasks_blocked()
    first, second = await Conn.open(world.server), await Conn.open(world.server)
    for conn in (first, second):
        response, _ = await conn.request(sandbox_get(world, sid, token))
        assert response.status_code == 200
    await trio.testing.wait_all_tasks_blocked()
    third = await Conn.open(world.server)
    response, _ = await third.request(sandbox_get(world, sid, token))
    assert response.status_code == 200
    assert await first.closed_by_server()
    response, _ = await second.request(sandbox_get(world, sid, token))
    assert response.status_code == 200
