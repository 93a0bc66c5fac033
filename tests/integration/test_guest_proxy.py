"""Guests through the subdomain proxy (recording upstream): opencode's secret-bearing routes
are refused and the directory selectors removed; members who may use the sandbox are not
filtered."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.support.proxy_world import World


async def cookie_of(world: World, sandbox_id: str, role: str) -> str:
    client = await world.member(role, role)
    try:
        return await world.open(sandbox_id, client)
    finally:
        await client.aclose()


async def test_a_guest_is_refused_the_config_and_providers(world: World) -> None:
    """GET /config, /config/providers, /provider and a disguised spelling answer 403 to a guest
    and never reach the agent."""
    sid = await world.sandbox()
    token = await cookie_of(world, sid, "guest")
    async with world.sub(sid, token) as sub:
        for path in ("/config", "/config/providers", "/provider", "/%63onfig/"):
            response = await sub.get(path)
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "forbidden"
    assert world.upstream.requests == []


async def test_a_guests_directory_selectors_never_reach_the_agent(world: World) -> None:
    """A guest's `directory` parameter and x-opencode-directory header are removed, the rest
    of the request is forwarded."""
    sid = await world.sandbox()
    token = await cookie_of(world, sid, "guest")
    async with world.sub(sid, token) as sub:
        response = await sub.get(
            "/json?path=environ&directory=/proc/self",
            headers={"x-opencode-directory": "/proc/self"},
        )
    assert response.status_code == 200
    [seen] = world.upstream.seen("/json")
    assert urlsplit(seen.target).query == "path=environ"
    assert seen.header("x-opencode-directory") == []


async def test_a_developer_is_not_filtered(world: World) -> None:
    """A developer reaches /config and keeps the directory selectors."""
    sid = await world.sandbox()
    token = await cookie_of(world, sid, "developer")
    async with world.sub(sid, token) as sub:
        config = await sub.get("/config")
        json_ = await sub.get("/json?directory=/data/disk0", headers={"x-opencode-directory": "d"})
    assert config.status_code != 403
    assert world.upstream.seen("/config")
    assert json_.status_code == 200
    [seen] = world.upstream.seen("/json")
    assert urlsplit(seen.target).query == "directory=/data/disk0"
    assert seen.header("x-opencode-directory") == ["d"]
