"""Choosing which of the listener's two paths serves sandbox-host and LLM proxy requests
(proxy/front.py).

The front door serves a plain HTTP/1.1 request for a sandbox host, or for the LLM proxy's
paths on the main host, on its fast path (`front.Exchange`) and hands everything else to
hypercorn. A test server runs in the test's own process, so patching `Front._route` and
`Front._main_site` chooses per connection, with no hook in src/: while `mode` is "hypercorn"
no Host routes to a sandbox there and no main-site path is claimed, so every new connection is
handed to hypercorn, which serves both through the same SubdomainProxy and LLM middleware.
The fast-path exchanges are counted, so a test can show the path it asked for was the one
taken. (WebSocket upgrades always go to hypercorn: the fast path never takes them.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest

from agentserver.http1 import RequestHead
from agentserver.proxy import front
from agentserver.proxy.exchange import Handler
from agentserver.proxy.routing import Route

Path = Literal["fast", "hypercorn"]
PATHS: tuple[Path, ...] = ("fast", "hypercorn")


@dataclass
class ServerPaths:
    """The path new sandbox-host requests take (`mode`) and how many took the fast one; how
    many connections were accepted and how many of them were handed to hypercorn."""

    mode: Path = "fast"
    exchanges: int = 0
    connections: int = 0
    handed_over: int = 0


def choose_paths(monkeypatch: pytest.MonkeyPatch) -> ServerPaths:
    """Patch the front door (for this test) so `ServerPaths.mode` picks the path."""
    paths = ServerPaths()
    route = front.Front._route
    main_site = front.Front._main_site
    exchange = front.Exchange

    def routed(self: front.Front, host: bytes) -> Route | None:
        target = route(self, host)
        return None if paths.mode == "hypercorn" else target

    def claimed(self: front.Front, request: RequestHead) -> Handler | None:
        handler = main_site(self, request)
        return None if paths.mode == "hypercorn" else handler

    def counted(*args: Any, **kwargs: Any) -> front.Exchange:
        paths.exchanges += 1
        return exchange(*args, **kwargs)

    client = front.Client
    hand_over = front.Front._hand_over

    def accepted(*args: Any) -> front.Client:
        paths.connections += 1
        return client(*args)

    async def handing_over(self: front.Front, *args: Any) -> None:
        paths.handed_over += 1
        await hand_over(self, *args)

    monkeypatch.setattr(front.Front, "_route", routed)
    monkeypatch.setattr(front.Front, "_main_site", claimed)
    monkeypatch.setattr(front, "Exchange", counted)
    monkeypatch.setattr(front, "Client", accepted)
    monkeypatch.setattr(front.Front, "_hand_over", handing_over)
    return paths


# `date` differs between any two responses. hypercorn adds `server: hypercorn-h11`, which the
# fast path does not send: a known difference (hypercorn's include_server_header), left to
# whoever owns serve.py; every other header must match.
VARYING = {"date", "server"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def answer(response: httpx.Response) -> Answer:
    headers = sorted(
        (k.decode().lower(), v.decode())
        for k, v in response.headers.raw
        if k.decode().lower() not in VARYING
    )
    return Answer(response.status_code, headers, response.content)


Ask = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def on_both_paths(
    paths: ServerPaths, client: Callable[[], httpx.AsyncClient], ask: Ask
) -> dict[str, Answer]:
    """`ask` once per path, each on a fresh connection; checks which path served it."""
    answers: dict[str, Answer] = {}
    for path in PATHS:
        paths.mode, before = path, paths.exchanges
        async with client() as sub:
            answers[path] = answer(await ask(sub))
        assert paths.exchanges - before == (1 if path == "fast" else 0), path
    return answers


@pytest.fixture(params=PATHS)
def server_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the test once on each path; afterwards, check the path it named was taken."""
    paths = choose_paths(monkeypatch)
    paths.mode = request.param
    yield request.param
    if paths.mode == "fast":
        assert paths.exchanges > 0, "no sandbox-host or LLM request took the fast path"
    else:
        assert paths.exchanges == 0, "a sandbox-host or LLM request took the fast path"
