"""What the subdomain proxy guards on every sandbox request, on both server paths: a request
body that stops arriving is cut off with a 408, and every page carries a framing policy.

Raw sockets, so what crosses the wire is what is tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from agentserver.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_proxy_front import broken_agent, get, header, wire
from tests.support.proxy_world import World

BODY_TIMEOUT = "500ms"
# Far longer than the body timeout: only a server that never answers reaches it.
HANG_GUARD = 20


@pytest.fixture
def server_settings(db_url: str, tmp_path: Path) -> Settings:
    """This module's server waits half a second for the next bytes of a request body, and
    its OAuth callbacks come to a name under the base domain."""
    return make_settings(
        db_url,
        tmp_path / "data",
        proxy_body_timeout=BODY_TIMEOUT,
        oidc_redirect_base_url="http://login.localhost:9000",
    )


async def stalled_upload(world: World, framing: str, first: bytes) -> tuple[int, bytes, bytes]:
    """Send a POST's head and the start of its body, then nothing: the status answered, the
    Connection header and what the server sends after the response (b"" = it closed)."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"POST")
    origin = f"http://{world.host(sid)}"
    await client.send(
        (
            f"POST /echo HTTP/1.1\r\nHost: {world.host(sid)}\r\nOrigin: {origin}\r\n"
            f"Cookie: agentserver_sandbox={token}\r\n{framing}\r\n\r\n"
        ).encode()
        + first
    )
    with trio.fail_after(HANG_GUARD):
        response, _ = await client.response()
        rest = await client.stream.receive_some(65536)
    return response.status_code, header(response, b"connection") or b"", rest


async def test_a_stalled_sized_body_on_the_fast_path_gets_408_and_the_connection_closes(
    world: World,
) -> None:
    """A Content-Length body that stops arriving (fast path) is answered 408 and its
    connection is closed, so a trickled upload cannot hold it."""
    status, _, rest = await stalled_upload(world, "Content-Length: 100", b"only ten b")
    assert status == 408
    assert rest == b""
    assert world.upstream.seen("/echo") == []


async def test_a_stalled_chunked_body_on_hypercorn_gets_408_and_the_connection_closes(
    world: World,
) -> None:
    """A chunked body (hypercorn's path) that stops arriving is answered 408 and its
    connection is closed."""
    status, _, rest = await stalled_upload(world, "Transfer-Encoding: chunked", b"5\r\nhello\r\n")
    assert status == 408
    assert rest == b""
    assert world.upstream.seen("/echo") == []


async def test_proxied_pages_may_be_framed_only_by_their_own_sandbox(world: World) -> None:
    """A proxied response without a policy of its own gets frame-ancestors 'self' and
    X-Frame-Options SAMEORIGIN, so a sibling sandbox cannot frame it."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"GET")
    await client.send(get(world, sid, token, "/"))
    response, _ = await client.response()
    assert response.status_code == 200
    assert header(response, b"content-security-policy") == b"frame-ancestors 'self'"
    assert header(response, b"x-frame-options") == b"SAMEORIGIN"


async def test_an_apps_own_framing_policy_is_kept(world: World, nursery: trio.Nursery) -> None:
    """An agent that sets X-Frame-Options itself keeps it, and no policy of ours is added."""
    port = await nursery.start(
        broken_agent,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Frame-Options: DENY\r\n\r\nok",
    )
    sid = await world.sandbox(port=port)
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"GET")
    await client.send(get(world, sid, token, "/"))
    response, body = await client.response()
    assert (response.status_code, body) == (200, b"ok")
    assert [v for n, v in response.headers if n == b"x-frame-options"] == [b"DENY"]
    assert header(response, b"content-security-policy") is None


async def test_status_pages_carry_the_framing_policy_too(world: World) -> None:
    """The proxy's own pages on a sandbox host (here: sign in needed) cannot be framed by
    another sandbox either."""
    sid = await world.sandbox()
    client = await wire(world)
    client.expect(b"GET")
    await client.send(get(world, sid, "bogus", "/json", "Accept: application/json\r\n"))
    response, _ = await client.response()
    assert response.status_code == 401
    assert header(response, b"content-security-policy") == b"frame-ancestors 'self'"


async def test_repeated_bogus_cookies_cost_the_database_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten requests carrying the same three bogus sandbox cookies look each cookie up once,
    not thirty times: refusals are remembered for a few seconds."""
    sid = await world.sandbox()
    db = world.server.deps.db
    looked_up: list[str] = []
    rows = db.rows

    async def counting(name: str, /, **params: Any) -> list[dict[str, Any]]:
        if name == "proxy_session_access":
            looked_up.append(params["token_hash"])
        return await rows(name, **params)

    monkeypatch.setattr(db, "rows", counting)
    cookies = "; ".join(f"agentserver_sandbox=bogus-{n}" for n in range(3))
    async with world.sub(sid, Accept="application/json", Cookie=cookies) as sub:
        for _ in range(10):
            assert (await sub.get("/json")).status_code == 401
    assert len(looked_up) == 3


async def test_a_valid_cookie_still_works_beside_a_refused_one(world: World) -> None:
    """A remembered refusal of one cookie does not stop a valid cookie sent after it."""
    sid = await world.sandbox()
    token = await world.open(sid)
    cookies = f"agentserver_sandbox=bogus; agentserver_sandbox={token}"
    async with world.sub(sid, Accept="application/json", Cookie=cookies) as sub:
        for _ in range(3):
            assert (await sub.get("/json")).status_code == 200


@pytest.mark.parametrize(
    ("label", "code"),
    [("anything", "not_found"), ("p3000-bad_id", "not_found"), ("oc-bad_id", "not_found")],
)
async def test_unknown_hosts_under_the_base_domain_get_a_plain_404(
    world: World, label: str, code: str
) -> None:
    """A name under the base domain that is no sandbox answers 404, not the dashboard."""
    host = f"{label}.localhost:{world.server.port}"
    async with world.sub("x", Host=host, Accept="application/json") as client:
        response = await client.get("/")
        api = await client.get("/api/auth/me")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == code
    assert api.status_code == 404


async def test_the_main_site_answers_by_ip_address_too(world: World) -> None:
    """A host outside the base domain (here 127.0.0.1:port) is still the main site."""
    async with world.server.client(headers={"Host": f"127.0.0.1:{world.server.port}"}) as client:
        assert (await client.get("/api/auth/me")).status_code == 401
    assert (await world.owner.get("/api/auth/me")).status_code == 200


async def test_a_configured_callback_host_under_the_base_domain_is_the_main_site(
    world: World,
) -> None:
    """The host of --oidc-redirect-base-url, though under the base domain, reaches the main
    site (its API answers), not a 404."""
    host = f"login.localhost:{world.server.port}"
    async with world.server.client(headers={"Host": host}) as client:
        assert (await client.get("/api/auth/me")).status_code == 401
