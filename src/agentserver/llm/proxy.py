"""The Anthropic proxy: a sandbox calls /proxy/anthropic/* with its token; we add the real key."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from agentserver.auth.tokens import hash_token
from agentserver.db.database import Tx
from agentserver.deps import Deps
from agentserver.errors import AgentServerError
from agentserver.llm.refusals import RefusalCounts, RefusalLog
from agentserver.llm.rules import (
    PREFIX,
    Caller,
    CallerCache,
    Refusal,
    Requested,
    Route,
    UnknownTokens,
    check_caller,
    check_limits,
    check_model,
    error_body,
    input_estimate,
    is_sandbox_host,
    proxy_token,
    read_request,
    reservation,
    response_headers,
    route_for,
    upstream_headers,
    upstream_url,
)
from agentserver.llm.usage import StreamUsage, Usage, parse_message

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A non-streamed answer is kept (besides being passed on) only up to this size to read its usage.
MAX_PARSED_BODY = 8 << 20
# Database look-ups of tokens not in the cache that may run at once: made-up tokens can then
# hold at most this many of the pool's connections, whatever the traffic.
LOOKUPS_AT_ONCE = 2


class ClientGone(Exception):
    """The sandbox hung up before sending its whole request."""


async def read_body(receive: Receive, limit: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole request body, counted as it arrives: a lying Content-Length cannot get past."""
    declared = dict(headers).get(b"content-length", b"").strip()
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(413, f"the request body is larger than {limit} bytes", reason="too_large")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise Refusal(413, f"the request body is larger than {limit} bytes", reason="too_large")
        if not message.get("more_body"):
            return bytes(body)


async def send_error(send: Send, refusal: Refusal) -> None:
    headers = [(b"content-type", b"application/json")]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(refusal.retry_after).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": error_body(refusal.status, refusal.message)})


@dataclass(frozen=True, slots=True)
class Admission:
    """What the admission transaction needs to know of a call besides its caller."""

    route: Route
    requested: Requested
    body_size: int


@dataclass(slots=True)
class Seen:
    """What admission learnt of a call before it was refused."""

    token_hash: str | None = None
    caller: Caller | None = None
    model: str | None = None


class Call:
    """One forwarded call: its usage row, and what is learnt about it while the answer passes."""

    def __init__(self, caller: Caller, model: str | None) -> None:
        self.caller = caller
        self.model = model
        self.row_id: int | None = None
        # 499 (nginx's "client closed request") until upstream answers or is found unreachable.
        self.status = 499
        self.streaming = False
        self.started = time.perf_counter()
        self.stream = StreamUsage()
        self.kept = bytearray()  # a copy of a non-streamed answer, for its usage
        self.kept_all = True
        self.finished = False

    def observe(self, chunk: bytes) -> None:
        if self.streaming:
            self.stream.feed(chunk)
        elif self.kept_all:
            self.kept += chunk
            if len(self.kept) > MAX_PARSED_BODY:
                self.kept_all, self.kept = False, bytearray()

    def usage(self) -> Usage:
        if self.streaming:
            return self.stream.usage
        return parse_message(bytes(self.kept)) if self.kept_all else Usage()


class LlmProxy:
    """Authenticates the sandbox, enforces limits, forwards, streams back and records usage."""

    def __init__(self, deps: Deps, client: httpx.AsyncClient) -> None:
        self.deps = deps
        self.client = client
        self.settings = deps.settings
        self.callers = CallerCache()
        self.unknown = UnknownTokens()
        self.lookups = trio.CapacityLimiter(LOOKUPS_AT_ONCE)
        self.refusal_log = RefusalLog()
        self.refusal_counts = RefusalCounts(self.write_refusals)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            call, request = await self.admit(scope, receive)
        except Refusal as refusal:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.refused(refusal)
            await send_error(send, refusal)
            return
        except ClientGone:
            await trio.lowlevel.checkpoint()
            return
        except AgentServerError as exc:
            log.warning("LLM proxy refused a call: %s", exc.message)
            if exc.status < 500:
                await send_error(send, Refusal(exc.status, exc.message))
            else:
                await send_error(send, Refusal(503, "the server cannot check the proxy token now"))
            return
        try:
            await self.forward(call, request, receive, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.finish(call)

    async def refused(self, refusal: Refusal) -> None:
        """Log the refusal (rate-limited) and count it for the Usage page (bounded)."""
        self.refusal_log.note(refusal)
        await self.refusal_counts.add(refusal)

    async def write_refusals(
        self, caller: Caller, reason: str, count: int, model: str | None
    ) -> None:
        await self.deps.db.exec(
            "llm_refusal_add",
            workspace_id=caller.workspace_id,
            sandbox_id=caller.sandbox_id,
            sandbox_name=caller.name,
            reason=reason,
            count=count,
            model=model,
        )

    async def admit(self, scope: Scope, receive: Receive) -> tuple[Call, httpx.Request]:
        """Every check before anything leaves for Anthropic; returns the call and its request.
        A refusal carries the caller and model when they were known by then."""
        seen = Seen()
        try:
            return await self.checked(scope, receive, seen)
        except Refusal as refusal:
            if refusal.status == 404 and seen.caller is None and seen.token_hash:
                seen.caller = await self.identify(seen.token_hash)
            refusal.caller = refusal.caller or seen.caller
            refusal.model = refusal.model or seen.model
            if refusal.status == 401 and refusal.caller is not None:
                refusal.reason = "token_revoked"  # its sandbox was deleted since it was cached
            raise

    async def identify(self, token_hash: str) -> Caller | None:
        """The sandbox of a call refused before its token was looked at, if there is one."""
        await trio.lowlevel.checkpoint()
        try:
            return self.callers.get(token_hash) or await self.lookup(token_hash)
        except Refusal as refusal:
            return refusal.caller

    async def checked(
        self, scope: Scope, receive: Receive, seen: Seen
    ) -> tuple[Call, httpx.Request]:
        headers: list[tuple[bytes, bytes]] = [(k.lower(), v) for k, v in scope["headers"]]
        token = proxy_token(headers)
        if token is None:
            raise Refusal(
                401,
                "missing api key: send the sandbox's proxy token in x-api-key",
                reason="missing_token",
            )
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        token_hash = seen.token_hash = hash_token(token)
        url = upstream_url(self.settings, raw_path, scope.get("query_string", b""))
        route = route_for(scope["method"], raw_path)
        caller = seen.caller = self.callers.get(token_hash) or await self.lookup(token_hash)
        if not (self.settings.anthropic_api_key or self.settings.anthropic_auth_token):
            raise Refusal(
                503, "the server has no Anthropic credentials configured", reason="no_credentials"
            )
        body = await read_body(receive, self.settings.llm_max_body, headers)
        requested = read_request(body, dict(headers).get(b"content-type", b"").decode("latin-1"))
        seen.model = requested.model
        check_model(self.settings, requested.model, required=route.names_model)
        try:
            request = self.client.build_request(
                scope["method"], url, content=body, headers=upstream_headers(headers, self.settings)
            )
        except (httpx.InvalidURL, UnicodeError):
            raise Refusal(400, "the path or a header cannot be forwarded") from None
        call = Call(caller, requested.model)
        admission = Admission(route, requested, len(body))
        try:
            call.row_id = await self.deps.db.transaction(
                lambda tx: self.start_row(tx, scope, call, token_hash, admission)
            )
        except Refusal as refusal:
            seen.caller = call.caller
            if refusal.status in (401, 403):
                self.callers.forget(token_hash)
            if refusal.status == 401:
                self.unknown.add(token_hash)  # its sandbox is gone: the token never comes back
            raise
        self.record_activity(caller.sandbox_id)
        return call, request

    async def lookup(self, token_hash: str) -> Caller:
        """The sandbox of a token the cache does not know: one query, a few at once at most;
        a token that belongs to no sandbox is remembered briefly and costs no further query."""
        if token_hash in self.unknown:
            raise Refusal(401, "invalid api key", reason="unknown_token")
        async with self.lookups:
            found = await self.deps.db.one("llm_caller_by_token", Caller, token_hash=token_hash)
        if found is None:
            self.unknown.add(token_hash)
        caller = check_caller(found)
        self.callers.put(token_hash, caller)
        return caller

    def start_row(
        self, tx: Tx, scope: Scope, call: Call, token_hash: str, admission: Admission
    ) -> int:
        """Admission in one transaction: the token again (it may be revoked by now), the
        limits under the workspace's lock, and the usage row that counts this call, holding
        its reservation of the daily token quota until `finish` settles it."""
        raw_path = scope.get("raw_path") or scope["path"].encode()
        endpoint = raw_path[len(PREFIX) :].decode("ascii", "replace")[:200] or "/"
        row = {"method": scope["method"], "endpoint": endpoint, "model": call.model}
        found = tx.rows(
            "llm_admit_unlimited",
            token_hash=token_hash,
            **row,
            default_rpm=self.settings.llm_rpm,
            default_tokens_per_day=self.settings.llm_tokens_per_day,
        )
        fields = found[0] if found else None
        row_id = fields.pop("row_id") if fields else None
        caller = call.caller = check_caller(Caller(**fields) if fields else None)
        if row_id is not None:
            return int(row_id)
        rpm, per_day = caller.limits(self.settings)
        route, size = admission.route, admission.body_size
        reserved = reservation(route, admission.requested, size, per_day)
        # Serialised per workspace: the next admission sees this one's reservation.
        tx.exec("llm_lock_workspace", workspace_id=caller.workspace_id)
        load = tx.rows("llm_workspace_load", workspace_id=caller.workspace_id)[0]
        check_limits(rpm, per_day, load, input_estimate(size) if route.spends_tokens else 0)
        started: int = tx.scalar(
            "llm_usage_start",
            sandbox_id=caller.sandbox_id,
            workspace_id=caller.workspace_id,
            user_id=caller.created_by,
            sandbox_name=caller.name,
            streaming=False,
            reserved_tokens=reserved,
            **row,
        )
        return started

    async def forward(
        self, call: Call, request: httpx.Request, receive: Receive, send: Send
    ) -> None:
        """Forward and answer; a sandbox that hangs up cancels the upstream call too."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_disconnect, receive, nursery.cancel_scope)
            await self.exchange(call, request, send)
            nursery.cancel_scope.cancel()

    async def exchange(self, call: Call, request: httpx.Request, send: Send) -> None:
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            log.warning("LLM upstream unreachable: %s", type(exc).__name__)
            call.status = 502
            # Recorded before the answer, like every other: the caller may read usage next.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.finish(call)
            await send_error(send, Refusal(502, "the Anthropic API could not be reached"))
            return
        try:
            call.status = response.status_code
            call.streaming = "text/event-stream" in response.headers.get("content-type", "")
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response_headers(response.headers.raw),
                }
            )
            await self.pump(call, response, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await response.aclose()

    async def pump(self, call: Call, response: httpx.Response, send: Send) -> None:
        """Pass each chunk on as soon as it arrives, reading usage from it on the way."""
        try:
            async for chunk in response.aiter_raw():
                call.observe(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as exc:
            log.warning("LLM upstream broke off mid-answer: %s", type(exc).__name__)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await self.finish(call)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def finish(self, call: Call) -> None:
        """Complete the call's usage row (once)."""
        if call.row_id is None or call.finished:
            await trio.lowlevel.checkpoint()
            return
        call.finished = True
        usage = call.usage()
        try:
            await self.deps.db.exec(
                "llm_usage_finish",
                id=call.row_id,
                status=call.status,
                streaming=call.streaming,
                duration_ms=int((time.perf_counter() - call.started) * 1000),
                model=usage.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_creation_input_tokens=usage.cache_creation_input_tokens,
                cache_read_input_tokens=usage.cache_read_input_tokens,
            )
        except AgentServerError as exc:
            log.warning("could not record LLM usage: %s", exc.message)
            await trio.lowlevel.checkpoint()
        self.record_activity(call.caller.sandbox_id)

    def record_activity(self, sandbox_id: str) -> None:
        self.deps.sandboxes.record_activity(sandbox_id)


@asynccontextmanager
async def open_llm_client() -> AsyncIterator[httpx.AsyncClient]:
    """The upstream HTTP client: a bounded connect, no read timeout (answers stream for minutes)."""
    timeout = httpx.Timeout(None, connect=10.0, pool=30.0)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False) as client:
        yield client


def llm_middleware(app: ASGIApp, deps: Deps, client: httpx.AsyncClient) -> ASGIApp:
    """Take /proxy/anthropic/* on the main host; everything else goes to `app` untouched."""
    proxy = LlmProxy(deps, client)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_ours(scope):
            await proxy.handle(scope, receive, send)
        else:
            await app(scope, receive, send)

    return asgi


def _is_ours(scope: Scope) -> bool:
    path: str = scope["path"]
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return False
    host = next((v for k, v in scope["headers"] if k.lower() == b"host"), b"")
    return not is_sandbox_host(host.decode("latin-1"))
