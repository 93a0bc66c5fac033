"""Who may reach a preview: a member, a guest (GET only), a non-member, anonymous callers, a
public port and one made private again, a paused sandbox's ports; the ticket is single-use."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.conftest import register
from tests.support.preview_world import Previews
from tests.support.server_paths import Path

JSON = {"Accept": "application/json"}


async def test_a_guest_may_look_but_not_change(previews: Previews, server_path: Path) -> None:
    """A guest opens a preview and GETs it; a POST is refused before it reaches the app."""
    world = previews.world
    sid = await world.sandbox()
    app = await previews.dev_server(sid, 5173)
    guest = await world.member("gina", "guest")
    cookie = await previews.open(sid, 5173, guest)
    origin = {"Origin": previews.origin(sid, 5173), **JSON}
    async with previews.client(sid, 5173, cookie, **origin) as sub:
        assert (await sub.get("/json")).status_code == 200
        posted = await sub.post("/echo", content=b"x")
    assert posted.status_code == 403
    assert posted.json()["error"]["code"] == "forbidden"
    assert [r.target for r in app.requests] == ["/json"]
    assert await previews.ws_refusal(sid, 5173, cookie, previews.origin(sid, 5173)) == 403


async def test_a_non_member_and_anonymous_callers_are_kept_out(
    previews: Previews, server_path: Path
) -> None:
    """A non-member cannot open the preview (404, as for no sandbox); without a cookie an API
    client gets 401 and a browser is sent to sign in through the main site's /open."""
    world = previews.world
    sid = await world.sandbox()
    app = await previews.dev_server(sid, 5173)
    outsider = world.server.client()
    await register(outsider, "oscar")
    refused = await outsider.get(f"/api/sandboxes/{sid}/open?port=5173")
    await outsider.aclose()
    assert refused.status_code == 404
    async with previews.client(sid, 5173, **JSON) as sub:
        anonymous = await sub.get("/json")
    assert anonymous.status_code == 401
    async with previews.client(sid, 5173, Accept="text/html") as sub:
        browser = await sub.get("/")
    assert browser.status_code == 302
    location = urlsplit(browser.headers["location"])
    assert location.path == f"/api/sandboxes/{sid}/open"
    assert location.query.endswith("&port=5173")
    async with previews.client(sid, 5173, "forged-token", **JSON) as sub:
        assert (await sub.get("/json")).status_code == 401
    assert app.requests == []


async def test_the_ticket_works_once(previews: Previews) -> None:
    """A preview's ticket is spent by its first use; the second is refused."""
    sid = await previews.world.sandbox()
    url = urlsplit(await previews.ticket_url(previews.world.owner, sid, 5173))
    async with previews.client(sid, 5173) as sub:
        assert (await sub.get(f"{url.path}?{url.query}")).status_code == 302
        again = await sub.get(f"{url.path}?{url.query}", headers=JSON)
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "ticket_invalid"


async def test_a_public_port_needs_no_sign_in_until_made_private(
    previews: Previews, server_path: Path
) -> None:
    """Anyone reaches a public port (a webhook's POST too, with no Origin); made private again,
    anonymous callers are refused at once; the API records who did it."""
    world = previews.world
    sid = await world.sandbox()
    app = await previews.dev_server(sid, 3000)
    made = await world.owner.put(f"/api/sandboxes/{sid}/previews/3000/public")
    assert made.status_code == 200
    assert made.json()["public"] is True
    async with previews.client(sid, 3000, **JSON) as sub:
        assert (await sub.get("/json")).status_code == 200
        assert (await sub.post("/echo", content=b"hook")).content == b"hook"
    async with previews.client(sid, 5173, **JSON) as sub:
        assert (await sub.get("/json")).status_code == 401  # only that port is public
    unmade = await world.owner.delete(f"/api/sandboxes/{sid}/previews/3000/public")
    assert unmade.status_code == 200
    assert unmade.json()["public"] is False
    async with previews.client(sid, 3000, **JSON) as sub:
        assert (await sub.get("/json")).status_code == 401
    assert [r.target for r in app.requests] == ["/json", "/echo"]


async def test_a_guest_may_not_make_a_port_public(previews: Previews) -> None:
    """Making a port public is for members who may use the sandbox: a guest gets 403."""
    world = previews.world
    sid = await world.sandbox()
    guest = await world.member("gus", "guest")
    refused = await guest.put(f"/api/sandboxes/{sid}/previews/3000/public")
    assert refused.status_code == 403
    async with previews.client(sid, 3000, **JSON) as sub:
        assert (await sub.get("/")).status_code == 401


async def test_pausing_makes_every_port_private(previews: Previews) -> None:
    """A public port stops being public when the sandbox pauses, and stays private after it
    runs again."""
    world = previews.world
    sid = await world.sandbox()
    await previews.dev_server(sid, 3000)
    assert (await world.owner.put(f"/api/sandboxes/{sid}/previews/3000/public")).status_code == 200
    await world.sql("UPDATE sandboxes SET status = 'pausing' WHERE id = %s", sid)
    await world.sql("UPDATE sandboxes SET status = 'running' WHERE id = %s", sid)
    previews_now = (await world.owner.get(f"/api/sandboxes/{sid}/previews")).json()["previews"]
    assert [(p["port"], p["public"]) for p in previews_now] == [(3000, False)]
    world.server.running.proxy.public.forget(sid)  # the change came by SQL, not the API
    async with previews.client(sid, 3000, **JSON) as sub:
        assert (await sub.get("/json")).status_code == 401
