"""The subdomain proxy against a real server and a recording upstream
(tests/support/upstream.py)."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio_websocket

from agentserver.auth.tokens import hash_token
from agentserver.proxy import splice
from tests.conftest import register
from tests.support.proxy_world import AGENT_SECRET, World
from tests.support.upstream import HTML, patterned


async def member(world: World, username: str, role: str) -> httpx.AsyncClient:
    client = world.server.client()
    await register(client, username)
    added = await world.owner.post(
        f"/api/workspaces/{world.workspace_id}/members", json={"username": username, "role": role}
    )
    assert added.status_code == 201, added.text
    return client


async def test_ticket_redemption_sets_a_host_only_cookie_and_proxies_html(world: World) -> None:
    """/open redirects to the subdomain with a ticket; redeeming sets a host-only HttpOnly
    cookie and `/` is the agent's HTML."""
    sid = await world.sandbox()
    location = await world.ticket_url(world.owner, sid)
    url = urlsplit(location)
    assert url.netloc == world.host(sid)
    assert url.path == "/_agentserver/auth"
    assert "agentserver_session" not in location
    async with world.sub(sid) as sub:
        redeemed = await sub.get(f"{url.path}?{url.query}")
        assert redeemed.status_code == 302
        assert redeemed.headers["location"] == "/"
        set_cookie = redeemed.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "SameSite=Lax" in set_cookie
        assert "domain" not in set_cookie.lower()
        assert "Secure" not in set_cookie
        token = redeemed.cookies["agentserver_sandbox"]
    async with world.sub(sid, token) as sub:
        page = await sub.get("/")
    assert page.status_code == 200
    assert page.content == HTML
    assert world.service.active == [sid]


async def test_our_credentials_never_reach_the_upstream(world: World) -> None:
    """The upstream never sees our cookies or the client's Authorization, and does see the
    injected Basic credentials."""
    sid = await world.sandbox()
    token = await world.open(sid)
    main_session = world.owner.cookies["agentserver_session"]
    cookie = f"agentserver_session={main_session}; agentserver_sandbox={token}; theme=dark"
    async with world.sub(sid, Cookie=cookie, Authorization="Bearer client-secret") as sub:
        response = await sub.get("/json?x=1")
        posted = await sub.post(
            "/echo", content=b"payload", headers={"Origin": f"http://{world.host(sid)}"}
        )
    assert response.json() == {"ok": True, "path": "/json"}
    assert posted.content == b"payload"
    expected = "Basic " + base64.b64encode(f"opencode:{AGENT_SECRET}".encode()).decode()
    for seen in world.upstream.requests:
        assert seen.header("authorization") == [expected]
        assert seen.header("cookie") == ["theme=dark"]
        flat = json.dumps(seen.headers)
        assert main_session not in flat
        assert token not in flat
        assert "client-secret" not in flat
        assert seen.header("x-forwarded-host") == [world.host(sid)]
        assert seen.header("x-forwarded-proto") == ["http"]
    assert world.upstream.seen("/json")[0].target == "/json?x=1"


async def test_sse_events_arrive_one_by_one(world: World) -> None:
    """Each SSE event reaches the browser before the upstream even produces the next one."""
    sid = await world.sandbox()
    token = await world.open(sid)
    assert world.upstream.sse_send is not None
    async with world.sub(sid, token) as sub, sub.stream("GET", "/sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.aiter_lines()
        for n in range(3):
            await world.upstream.sse_send.send(f"event-{n}")
            line = await anext(lines)
            while not line.startswith("data:"):
                line = await anext(lines)
            assert json.loads(line[5:])["payload"] == f"event-{n}"
        await world.upstream.sse_send.send("")


async def test_large_body_streams_through(world: World) -> None:
    """A 100 MB body arrives complete through the proxy."""
    sid = await world.sandbox()
    token = await world.open(sid)
    size = 100 * 1000 * 1000
    received = 0
    async with world.sub(sid, token) as sub, sub.stream("GET", f"/big?size={size}") as response:
        assert response.headers["content-length"] == str(size)
        async for chunk in response.aiter_raw():
            received += len(chunk)
    assert received == size


async def test_more_large_bodies_at_once_than_splice_threads_all_arrive_exact(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies over a pipe's worth move on splice threads (when more than THREADS run at once,
    the others on the event loop): fetched all at once, every one arrives byte for byte, and
    no thread slot stays taken."""
    threads: list[object] = []
    start_thread_soon = trio.lowlevel.start_thread_soon
    monkeypatch.setattr(
        trio.lowlevel,
        "start_thread_soon",
        lambda fn, deliver, name=None: (threads.append(name), start_thread_soon(fn, deliver, name)),
    )
    sid = await world.sandbox()
    token = await world.open(sid)
    size, count = 2 * splice.PIPE_SIZE + 12_345, splice.THREADS + 8
    received: dict[int, bytes] = {}

    async def fetch(seed: int) -> None:
        async with world.sub(sid, token) as sub:
            response = await sub.get(f"/big?size={size}&seed={seed}")
        assert response.status_code == 200
        received[seed] = response.content

    async with trio.open_nursery() as nursery:
        for seed in range(count):
            nursery.start_soon(fetch, seed)
    assert sorted(received) == list(range(count))
    for seed, body in received.items():
        assert body == patterned(size, seed), seed
    assert splice._threads().borrowed_tokens == 0
    assert threads  # the thread path was taken


async def ws_connect(
    world: World,
    nursery: trio.Nursery,
    sandbox_id: str,
    token: str | None,
    origin: str | None,
    subprotocols: list[str] | None = None,
) -> trio_websocket.WebSocketConnection:
    stream = await trio.open_tcp_stream("127.0.0.1", world.server.port)
    headers = [(b"origin", origin.encode())] if origin else []
    if token:
        headers.append((b"cookie", f"agentserver_sandbox={token}".encode()))
    return await trio_websocket.wrap_client_stream(
        nursery,
        stream,
        world.host(sandbox_id),
        "/ws?x=1",
        subprotocols=subprotocols,
        extra_headers=headers,
    )


async def ws_refusal(world: World, sandbox_id: str, token: str | None, origin: str | None) -> int:
    """The status with which the proxy answers a WebSocket upgrade it refuses."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    }
    if origin:
        headers["Origin"] = origin
    async with world.sub(sandbox_id, token, **headers) as sub:
        response = await sub.get("/ws")
    assert response.status_code != 101
    return response.status_code


async def test_websocket_relays_messages_and_close_codes(
    world: World, nursery: trio.Nursery
) -> None:
    """A WebSocket through the proxy exchanges text and bytes, keeps the subprotocol, passes the
    agent's close code to the browser and tells the agent when the browser closes."""
    sid = await world.sandbox()
    token = await world.open(sid)
    ws = await ws_connect(world, nursery, sid, token, f"http://{world.host(sid)}", ["tty"])
    assert ws.subprotocol == "tty"
    await ws.send_message("hello")
    assert await ws.get_message() == "echo:hello"
    await ws.send_message(b"\x00\x01")
    assert await ws.get_message() == b"\x00\x01"
    await ws.send_message("close-me")
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        await ws.get_message()
    assert closed.value.reason.code == 4001
    # A close from the browser reaches the agent as 1001 "going away": hypercorn (0.18) does not
    # pass the browser's own close code to the application.
    second = await ws_connect(world, nursery, sid, token, f"http://{world.host(sid)}")
    await second.send_message("ping")
    assert await second.get_message() == "echo:ping"
    await second.aclose(code=4002)
    with trio.fail_after(10):
        while 1001 not in world.upstream.ws_close_codes:
            await world.upstream.ws_closed.wait()
    seen = world.upstream.websockets[0]
    assert seen.target == "/ws?x=1"
    assert seen.header("authorization")[0].startswith("Basic ")
    assert token not in json.dumps(seen.headers)


async def test_cross_origin_requests_are_refused(world: World) -> None:
    """A WebSocket upgrade or a POST from another origin (even a sibling sandbox) is refused."""
    sid, other = await world.sandbox(), await world.sandbox()
    token = await world.open(sid)
    for origin in ("http://evil.example", f"http://{world.host(other)}", None):
        assert await ws_refusal(world, sid, token, origin) == 403
    async with world.sub(sid, token, Origin=f"http://{world.host(other)}") as sub:
        assert (await sub.post("/echo", content=b"x")).status_code == 403
    assert world.upstream.websockets == []
    assert world.upstream.seen("/echo") == []


async def test_a_ticket_works_once_and_expires(world: World) -> None:
    """A ticket is refused the second time, and refused once its expiry has passed."""
    sid = await world.sandbox()
    url = urlsplit(await world.ticket_url(world.owner, sid))
    async with world.sub(sid) as sub:
        assert (await sub.get(f"{url.path}?{url.query}")).status_code == 302
        again = await sub.get(f"{url.path}?{url.query}", headers={"Accept": "text/html"})
        assert again.status_code == 401
        assert "Link expired" in again.text
        url = urlsplit(await world.ticket_url(world.owner, sid))
        await world.sql("UPDATE sandbox_tickets SET expires_at = now() - interval '1 second'")
        expired = await sub.get(f"{url.path}?{url.query}")
        assert expired.status_code == 401
        assert expired.json()["error"]["code"] == "ticket_invalid"
        assert "set-cookie" not in expired.headers


async def test_a_cookie_for_one_sandbox_does_not_open_another(world: World) -> None:
    """The cookie (or a ticket) of sandbox A is worthless on sandbox B: API clients get 401,
    browsers go to B's /open (bound to the nonce B's host just gave them)."""
    a, b = await world.sandbox(), await world.sandbox()
    token = await world.open(a)
    url = urlsplit(await world.ticket_url(world.owner, a))
    async with world.sub(b, token) as sub:
        api = await sub.get("/json")
        browser = await sub.get("/", headers={"Accept": "text/html"})
        wrong_host = await sub.get(f"{url.path}?{url.query}")
    assert wrong_host.status_code == 401
    assert "set-cookie" not in wrong_host.headers
    assert api.status_code == 401
    assert browser.status_code == 302
    main = world.server.deps.settings.main_url
    nonce = browser.cookies["agentserver_bind"]
    assert browser.headers["location"] == f"{main}/api/sandboxes/{b}/open?bind={hash_token(nonce)}"
    assert world.upstream.requests == []


async def test_non_members_and_strangers_are_refused(world: World) -> None:
    """A non-member gets 404 from /open, anonymous gets 401, and no cookie means no access."""
    sid = await world.sandbox()
    async with world.server.client() as outsider, world.server.client() as anonymous:
        await register(outsider, "outsider")
        assert (await outsider.get(f"/api/sandboxes/{sid}/open")).status_code == 404
        assert (await outsider.get("/api/sandboxes/nosuchsandbox00/open")).status_code == 404
        assert (await anonymous.get(f"/api/sandboxes/{sid}/open")).status_code == 401
    async with world.sub(sid) as sub:
        assert (await sub.get("/json")).status_code == 401


async def test_guests_are_read_only(world: World) -> None:
    """A guest may GET but not POST, and may not open a WebSocket (terminal)."""
    sid = await world.sandbox()
    guest = await member(world, "guest", "guest")
    token = await world.open(sid, guest)
    await guest.aclose()
    origin = f"http://{world.host(sid)}"
    async with world.sub(sid, token, Origin=origin) as sub:
        assert (await sub.get("/json")).status_code == 200
        refused = await sub.post("/echo", content=b"rm -rf")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
    assert await ws_refusal(world, sid, token, origin) == 403
    assert world.upstream.seen("/echo") == []
    assert world.upstream.websockets == []


async def test_removed_member_loses_access(world: World) -> None:
    """Removing a member deletes their sandbox sessions, so their cookie stops working."""
    sid = await world.sandbox()
    dev = await member(world, "dev", "developer")
    token = await world.open(sid, dev)
    await dev.aclose()
    user_id = (await world.owner.get(f"/api/workspaces/{world.workspace_id}/members")).json()[1][
        "userId"
    ]
    removed = await world.owner.delete(f"/api/workspaces/{world.workspace_id}/members/{user_id}")
    assert removed.status_code == 204
    # The token was never used on the proxy, so no cached access can hide the revocation.
    async with world.sub(sid, token) as sub:
        assert (await sub.get("/json")).status_code == 401
    assert world.upstream.requests == []


async def test_paused_sandbox_wakes_and_shows_the_waking_page(world: World) -> None:
    """Opening a paused sandbox's page calls wake and answers 503 with a self-reloading page."""
    sid = await world.sandbox(status="paused")
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        page = await sub.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 503
    assert page.headers["retry-after"] == "2"
    assert '<meta http-equiv="refresh" content="2">' in page.text
    assert world.service.woken == [sid]
    assert world.upstream.requests == []


async def test_background_calls_do_not_wake_a_paused_sandbox(world: World) -> None:
    """A script's call (not a page load) to a paused sandbox gets a JSON 503 and leaves it paused,
    so a tab left open cannot undo a pause."""
    sid = await world.sandbox(status="paused")
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        api = await sub.get("/session")
        events = await sub.get("/event", headers={"Accept": "text/event-stream"})
    assert api.status_code == 503
    assert api.json()["error"]["code"] == "sandbox_paused"
    assert events.status_code == 503
    assert world.service.woken == []
    assert world.upstream.requests == []


async def test_failed_sandbox_shows_its_reason(world: World) -> None:
    """A failed sandbox answers a page carrying its reason, HTML-escaped."""
    sid = await world.sandbox(status="failed")
    await world.sql("UPDATE sandboxes SET status_reason = '<b>exit 3</b>' WHERE id = %s", sid)
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        page = await sub.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 503
    assert "&lt;b&gt;exit 3&lt;/b&gt;" in page.text


async def test_cancelling_a_client_mid_stream_closes_the_upstream(world: World) -> None:
    """When the browser leaves an endless stream, the proxy closes its upstream connection."""
    sid = await world.sandbox()
    token = await world.open(sid)
    async with world.sub(sid, token) as sub, sub.stream("GET", "/forever") as response:
        assert response.status_code == 200
        await world.upstream.stream_started.wait()
        await anext(response.aiter_raw())
    with trio.fail_after(10):
        await world.upstream.stream_closed.wait()
    pool = world.server.running.proxy.pool
    assert pool.idle_count(("127.0.0.1", world.upstream.port)) == 0


async def test_a_stale_pooled_connection_is_retried(world: World) -> None:
    """When the upstream silently dropped a kept-alive connection, the next request retries on a
    new one."""
    sid = await world.sandbox()
    token = await world.open(sid)
    world.upstream.drop_after_response = True
    async with world.sub(sid, token) as sub:
        for _ in range(3):
            response = await sub.get("/json")
            assert response.status_code == 200
    assert world.upstream.connections >= 3


async def test_upstream_cannot_set_our_cookies(world: World) -> None:
    """A Set-Cookie for our cookie names is dropped and a Domain attribute is removed."""
    sid = await world.sandbox()
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        response = await sub.get("/cookie")
    cookies = response.headers.get_list("set-cookie")
    assert cookies == ["theme=dark; Path=/"]


async def test_unreachable_sandbox_answers_502(world: World) -> None:
    """A running sandbox whose agent does not listen answers a 502 page, not a 500."""
    sid = await world.sandbox()
    token = await world.open(sid)
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    free_port = listener.getsockname()[1]
    listener.close()
    await world.sql("UPDATE sandboxes SET endpoint_port = %s WHERE id = %s", free_port, sid)
    async with world.sub(sid, token) as sub:
        response = await sub.get("/json")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "sandbox_unreachable"


async def test_main_site_is_untouched(world: World) -> None:
    """Requests to the main host still reach the API, and /_agentserver/auth there is no route."""
    assert (await world.owner.get("/api/auth/me")).status_code == 200
    assert (await world.owner.get("/_agentserver/auth?ticket=x")).status_code != 302
