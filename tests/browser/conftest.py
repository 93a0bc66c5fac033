"""Browser test fixtures: a real server in a trio thread, Debian's Chromium, recorded tours."""

from __future__ import annotations

import os
import queue
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from agentserver import serve
from tests.conftest import REPO, make_settings
from tests.support.sandboxes import reachable_data_dir

CHROMIUM = os.environ.get("AGENTSERVER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
TIMEOUT_MS = 20_000


@dataclass
class LiveServer:
    """A running agentserver whose trio loop lives in another thread (Playwright's is sync)."""

    url: str
    port: int
    running: serve.Running
    shutdown: trio.Event
    token: trio.lowlevel.TrioToken

    def client(self) -> httpx.Client:
        """A same-origin API client with its own cookie jar."""
        return httpx.Client(base_url=self.url, headers={"Origin": self.url}, timeout=30)

    def register(self, username: str, password: str = "correct-horse") -> httpx.Client:  # noqa: S107
        """A client signed in as a new user."""
        client = self.client()
        response = client.post(
            "/api/auth/register", json={"username": username, "password": password}
        )
        assert response.status_code == 201, response.text
        return client


def start_live_server(
    db_url: str, data_dir: Path, **overrides: str
) -> tuple[LiveServer, threading.Thread]:
    """Run `serve.run` with its own `trio.run` in a thread; return once it listens."""
    settings = make_settings(db_url, data_dir, **overrides)
    ready: queue.Queue[LiveServer | BaseException] = queue.Queue()

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            running: serve.Running = await nursery.start(
                partial(serve.run, settings, shutdown=shutdown)
            )
            # The main site is reached as localhost so that oc-{id}.localhost:{port} shares it.
            url = f"http://localhost:{running.port}"
            ready.put(
                LiveServer(
                    url=url,
                    port=running.port,
                    running=running,
                    shutdown=shutdown,
                    token=trio.lowlevel.current_trio_token(),
                )
            )

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            ready.put(exc)

    thread = threading.Thread(target=thread_main, name="agentserver", daemon=True)
    thread.start()
    started = ready.get(timeout=120)
    if isinstance(started, BaseException):
        raise started
    return started, thread


@pytest.fixture
def live_server_factory(db_url: str, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Starts a server (settings overridable by option name) and stops it after the test."""
    started: list[tuple[LiveServer, threading.Thread]] = []

    def start(**overrides: str) -> LiveServer:
        srv, thread = start_live_server(db_url, reachable_data_dir(tmp_path / "data"), **overrides)
        started.append((srv, thread))
        return srv

    yield start
    for srv, thread in started:
        trio.from_thread.run_sync(srv.shutdown.set, trio_token=srv.token)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not stop within 60 s"


@pytest.fixture
def live_server(live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    """A real agentserver on localhost for one browser test."""
    return live_server_factory()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (uv sync --group test)")
    # The machine is shared and busy: allow more than expect()'s default 5 s for the UI to settle.
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class Tour:
    """One browser context on the main site that records every console error and failed request."""

    name: str
    origin: str
    context: Any
    page: Any
    problems: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def ours(self, url: str) -> bool:
        return url.startswith(self.origin)

    def note(self, url: str, text: str) -> None:
        if any(p.search(text) for p in self.allowed):
            return
        (self.problems if self.ours(url) else self.elsewhere).append(text)

    def allow(self, pattern: str) -> None:
        """Expect problems matching `pattern` (a test that provokes an error on purpose)."""
        self.allowed.append(re.compile(pattern))

    def shot(self, step: str, page: Any = None) -> Path:
        """Save a screenshot as artifacts/screenshots/<test>-<step>.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOTS / f"{self.name}-{step}.png"
        (page or self.page).screenshot(path=str(target), full_page=True)
        return target

    def new_page(self) -> Any:
        return self.context.new_page()


def open_tour(browser: Any, name: str, origin: str, **context_options: Any) -> Tour:
    context = browser.new_context(**context_options)
    context.set_default_timeout(TIMEOUT_MS)
    tour = Tour(name=name, origin=origin, context=context, page=None)
    # Other tests running alongside add and remove network interfaces (sandboxes' veth pairs,
    # Docker networks); Chromium then fails the requests it has in flight with this error.
    # The machine's churn, not a fault of the page (seen in CI).
    tour.allow(r"net::ERR_NETWORK_CHANGED")

    def on_console(message: Any) -> None:
        if message.type == "error":
            url = (message.location or {}).get("url", "") or tour.origin
            tour.note(url, f"console error: {message.text} ({url})")

    def on_failed(request: Any) -> None:
        failure = request.failure or ""
        # A page navigating away (e.g. the ticket redirect) aborts its own pending requests,
        # and the browser drops its own favicon fetch the same way (seen once in CI).
        favicon = urlsplit(request.url).path.startswith("/favicon.")
        aborted = "ERR_ABORTED" in failure
        if aborted and (favicon or request.resource_type in ("eventsource", "document")):
            return
        tour.note(request.url, f"request failed: {request.method} {request.url} {failure}")

    def on_response(response: Any) -> None:
        if response.status >= 400:
            tour.note(
                response.url, f"HTTP {response.status}: {response.request.method} {response.url}"
            )

    context.on("console", on_console)
    context.on("weberror", lambda error: tour.note(tour.origin, f"page error: {error.error}"))
    context.on("requestfailed", on_failed)
    context.on("response", on_response)
    tour.page = context.new_page()
    return tour


@pytest.fixture
def tour_factory(browser: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., Tour]]:
    """Opens recorded browser contexts; at the end asserts none saw an error on our site."""
    tours: list[Tour] = []
    test_name = request.node.name.removeprefix("test_")

    def make(origin: str, label: str = "", **options: Any) -> Tour:
        name = f"{test_name}-{label}" if label else test_name
        tour = open_tour(browser, name, origin, **options)
        tours.append(tour)
        return tour

    yield make
    for tour in tours:
        tour.context.close()
    problems = [p for tour in tours for p in tour.problems]
    assert not problems, "console errors or failed requests:\n" + "\n".join(problems)


@pytest.fixture
def tour(tour_factory: Callable[..., Tour], live_server: LiveServer) -> Tour:
    """A desktop-sized recorded browser tab on the live server."""
    return tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
