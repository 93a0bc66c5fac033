"""The LLM proxy's calls through httpx, when the environment names an HTTP proxy for the API.

httpx honours HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY; the proxy's own client
(llm/upstream.py) does not speak to proxies, so a server whose environment sends the Anthropic
API's host through one keeps calling it through httpx, as before, with the same request head.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from agentserver.llm.upstream import (
    Answer,
    Broken,
    Headers,
    Request,
    Unreachable,
    Upstream,
    UpstreamClient,
)


def proxied(url: str) -> bool:
    """Whether the environment sends requests for `url` through a proxy (urllib's reading of
    the same variables httpx reads)."""
    parsed = httpx.URL(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parsed.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parsed.host)


class HttpxAnswer:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers: Headers = [(n.lower(), v) for n, v in response.headers.raw]

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    async def chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        """The body as it arrives, never decoded; httpx does not tell the last piece."""
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk, False
        except httpx.TransportError as exc:
            raise Broken(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """Sends the request llm/upstream.py built, head and body as they are, through httpx."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, request: Request) -> Answer:
        head = request.head
        sent = httpx.Request(
            head.method.decode("ascii"), request.url, headers=head.headers, content=request.body
        )
        try:
            return HttpxAnswer(await self.client.send(sent, stream=True))
        except httpx.TransportError as exc:
            raise Unreachable(type(exc).__name__) from exc


@asynccontextmanager
async def open_upstream(base_url: str) -> AsyncIterator[Upstream]:
    """The client for calls to `base_url`: our own, or httpx when a proxy must carry them."""
    if proxied(base_url):
        timeout = httpx.Timeout(None, connect=10.0, pool=30.0)
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            timeout=timeout, limits=limits, follow_redirects=False
        ) as client:
            yield HttpxUpstream(client)
        return
    own = UpstreamClient()
    try:
        yield own
    finally:
        own.close()
