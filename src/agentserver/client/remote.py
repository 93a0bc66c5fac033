"""The server as the command line sees it: JSON requests with the bearer token, and every
failure turned into one readable sentence (`Refused`), never a traceback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from agentserver import __version__

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class Refused(Exception):
    """The server refused or could not be reached: the message is for the person (exit 1)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = f"the server answered {response.status_code}"
    if response.status_code == 401:
        message += " (run `agentserver login` to sign in again)"
    return message


class Remote:
    """One server, reached with one token (or none, for signing in)."""

    def __init__(self, server: str, token: str | None = None) -> None:
        headers = {"Accept": "application/json", "User-Agent": f"agentserver-cli/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.server = server
        self._http = httpx.AsyncClient(base_url=server, headers=headers, timeout=TIMEOUT)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Remote:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(
        self, method: str, path: str, body: Any = None, *, accept: tuple[int, ...] = ()
    ) -> Any:
        """The JSON answer to `method path` (None for an empty one). A status in `accept` is
        answered as `(status, body)` instead of raising."""
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        data = response.json() if response.content else None
        if response.status_code in accept:
            return response.status_code, data
        if response.is_error:
            raise Refused(_server_message(response), response.status_code)
        return data

    async def get(self, path: str) -> Any:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, {} if body is None else body)

    async def delete(self, path: str) -> Any:
        return await self.call("DELETE", path)

    @asynccontextmanager
    async def events(self, path: str) -> AsyncIterator[AsyncIterator[tuple[str, Any]]]:
        """A server-sent event stream as (event type, JSON data) pairs."""
        request = self._http.build_request(
            "GET", path, headers={"Accept": "text/event-stream"}, timeout=httpx.Timeout(None)
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        try:
            if response.is_error:
                await response.aread()
                raise Refused(_server_message(response), response.status_code)
            yield _parsed(response.aiter_lines())
        finally:
            await response.aclose()

    def unreachable(self, exc: httpx.TransportError) -> Refused:
        reason = str(exc) or type(exc).__name__
        return Refused(f"cannot reach the server at {self.server}: {reason}")


async def _parsed(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    kind, data = "message", ""
    async for line in lines:
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""
