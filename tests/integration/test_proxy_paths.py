"""The same sandbox-host request answered on the listener's fast path and on hypercorn
(proxy/front.py) gives the same status, headers and body (tests/support/server_paths.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.proxy_world import World
from tests.support.server_paths import Ask, ServerPaths, choose_paths, on_both_paths


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> ServerPaths:
    return choose_paths(monkeypatch)


def get(path: str, **headers: str) -> Ask:
    async def ask(sub: httpx.AsyncClient) -> httpx.Response:
        return await sub.get(path, headers=headers)

    return ask


async def test_a_proxied_page_is_the_same_on_both_paths(world: World, paths: ServerPaths) -> None:
    """The agent's HTML, a JSON answer with a query string, a HEAD and a Set-Cookie the proxy
    rewrites come back identical from both paths."""
    sid = await world.sandbox()
    token = await world.open(sid)

    async def head(sub: httpx.AsyncClient) -> httpx.Response:
        return await sub.head("/")

    for ask in (get("/"), get("/json?x=1"), get("/cookie"), head):
        answers = await on_both_paths(paths, lambda: world.sub(sid, token), ask)
        assert answers["fast"] == answers["hypercorn"]
        assert answers["fast"].status == 200


async def test_an_upload_is_echoed_the_same_on_both_paths(world: World, paths: ServerPaths) -> None:
    """A sized POST body reaches the agent and its echo comes back identical on both paths."""
    sid = await world.sandbox()
    token = await world.open(sid)

    async def post(sub: httpx.AsyncClient) -> httpx.Response:
        return await sub.post("/echo", content=b"payload" * 1000)

    origin = f"http://{world.host(sid)}"
    answers = await on_both_paths(paths, lambda: world.sub(sid, token, Origin=origin), post)
    assert answers["fast"] == answers["hypercorn"]
    assert answers["fast"].body == b"payload" * 1000


async def test_refusals_are_the_same_on_both_paths(world: World, paths: ServerPaths) -> None:
    """No cookie (401), a guest's POST (403), a paused sandbox's API call (503), a failed
    sandbox's page (503) and an agent that does not listen (502) are answered identically."""
    sid = await world.sandbox()
    answers = await on_both_paths(paths, lambda: world.sub(sid), get("/json"))
    assert answers["fast"] == answers["hypercorn"]
    assert answers["fast"].status == 401

    guest = await world.member("guest", "guest")
    guest_token = await world.open(sid, guest)
    await guest.aclose()

    async def post(sub: httpx.AsyncClient) -> httpx.Response:
        return await sub.post("/echo", content=b"rm -rf")

    origin = f"http://{world.host(sid)}"
    answers = await on_both_paths(paths, lambda: world.sub(sid, guest_token, Origin=origin), post)
    assert answers["fast"] == answers["hypercorn"]
    assert answers["fast"].status == 403

    paused = await world.sandbox(status="paused")
    token = await world.open(paused)
    answers = await on_both_paths(paths, lambda: world.sub(paused, token), get("/session"))
    assert answers["fast"] == answers["hypercorn"]
    assert answers["fast"].status == 503

    failed = await world.sandbox(status="failed")
    token = await world.open(failed)
    page = get("/", Accept="text/html")
    answers = await on_both_paths(paths, lambda: world.sub(failed, token), page)
    assert answers["fast"] == answers["hypercorn"]
    assert answers["fast"].status == 503

    gone = await world.sandbox(port=1)
    token = await world.open(gone)
    answers = await on_both_paths(paths, lambda: world.sub(gone, token), get("/json"))
    assert answers["fast"] == answers["hypercorn"]
    assert answers["fast"].status == 502
