"""Previews in real Chromium: a dev server starts in a sandbox (the fake backend says it listens),
the sandbox's page lists it live, Open shows it in a new tab through the ticket, and Make
public marks it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio
from playwright.sync_api import expect

from agentserver.sandboxes.base import Endpoint
from agentserver.sandboxes.fake import FakeBackend
from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import api_workspace, sign_in

VIEWPORT = {"width": 1280, "height": 800}
DEV_PAGE = b"<!doctype html><title>my app</title><h1>Hello from the dev server</h1>"


class DevServer(BaseHTTPRequestHandler):
    """What `npm run dev` would serve: one page (and a 204 for anything else)."""

    seen_cookies: list[str] = []

    def do_GET(self) -> None:
        DevServer.seen_cookies.append(self.headers.get("Cookie", ""))
        if self.path != "/":
            self.send_response(204)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(DEV_PAGE)))
        self.end_headers()
        self.wfile.write(DEV_PAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dev_server() -> Iterator[int]:
    """A dev server on loopback (a free port), for the length of the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), DevServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join(timeout=10)


@pytest.mark.browser
def test_a_dev_server_is_listed_live_and_opens_in_a_new_tab(
    live_server: LiveServer, tour_factory: Callable[..., Tour], dev_server: int
) -> None:
    """The sandbox's page says nothing listens yet; once a server listens on 5173 the port
    appears without a reload; Open shows the app in a new tab (signed in by the ticket, none
    of our cookies reaching it); Make public marks it public."""
    fake = FakeBackend()

    def use_fake() -> None:
        live_server.running.deps.sandboxes.backend = fake

    trio.from_thread.run_sync(use_fake, trio_token=live_server.token)
    owner = live_server.register("paula")
    wid = api_workspace(owner, "Apps")
    created = owner.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "webapp"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]

    tour = tour_factory(live_server.url, viewport=VIEWPORT)
    sign_in(tour, "paula")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}/sandboxes/{sid}")
    panel = page.locator("[data-previews]")
    expect(panel).to_contain_text("Nothing is listening in this sandbox yet")
    tour.shot("nothing-yet")

    def listen() -> None:
        fake.listen(sid, 5173, Endpoint("127.0.0.1", dev_server))

    trio.from_thread.run_sync(listen, trio_token=live_server.token)
    port = panel.locator('[data-port="5173"]')
    expect(port).to_contain_text("Port 5173")  # live: the page was not reloaded
    expect(port).to_contain_text(f"p5173-{sid}.localhost:{live_server.port}")
    tour.shot("listed")

    with page.context.expect_page() as opened:
        port.get_by_role("link", name="Open port 5173").click()
    app = opened.value
    app.wait_for_load_state()
    expect(app.get_by_role("heading", name="Hello from the dev server")).to_be_visible()
    assert app.url == f"http://p5173-{sid}.localhost:{live_server.port}/"
    assert all("agentserver" not in cookies for cookies in DevServer.seen_cookies)
    tour.shot("app", app)

    port.get_by_role("button", name="Make public port 5173").click()
    expect(port.locator(".badge.public")).to_have_text("Public")
    expect(port.get_by_role("button", name="Make private port 5173")).to_be_visible()
    tour.shot("public")
