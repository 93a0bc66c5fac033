"""The Anthropic proxy: a sandbox calls /proxy/anthropic/* with its token; we add the real key.

The common call waits on no database: its token is found in the caller cache (kept exact by
change notices, llm/callers.py), its limits are decided by the ledger (llm/ledger.py), and its
usage row is handed to the recorder, which writes rows in batches (llm/recorder.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from agentserver.auth.tokens import hash_token
from agentserver.db.notify import LLM_QUOTA_CHANGED, SANDBOX_CHANGED, Notice
from agentserver.deps import Deps
from agentserver.errors import AgentServerError
from agentserver.llm.call import (
    Call,
    ClientGone,
    Receive,
    Scope,
    Seen,
    Send,
    read_body,
    send_error,
)
from agentserver.llm.callers import CallerCache
from agentserver.llm.ledger import Ledger
from agentserver.llm.recorder import UsageRecorder
from agentserver.llm.refusals import RefusalCounts, RefusalLog
from agentserver.llm.rules import (
    PREFIX,
    Caller,
    Refusal,
    Requested,
    Route,
    UnknownTokens,
    check_caller,
    check_model,
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
from agentserver.llm.upstream import (
    Answer,
    InvalidRequest,
    Request,
    Upstream,
    UpstreamError,
    build_request,
)
from agentserver.supervise import supervise

log = logging.getLogger(__name__)

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Database look-ups of tokens not in the cache that may run at once: made-up tokens can then
# hold at most this many of the pool's connections, whatever the traffic.
LOOKUPS_AT_ONCE = 2
# The stages of a call `timings` keeps, in order (the benchmark prints them).
STAGES = ("token check", "admission", "upstream", "usage write")


class LlmProxy:
    """Authenticates the sandbox, enforces limits, forwards, streams back and records usage."""

    def __init__(self, deps: Deps, client: Upstream, recorder: UsageRecorder) -> None:
        self.deps = deps
        self.client = client
        self.settings = deps.settings
        self.recorder = recorder
        self.ledger: Ledger = recorder.ledger
        changes = deps.db.changes
        self.callers = CallerCache(live=lambda: changes.live)
        self.unknown = UnknownTokens()
        self.lookups = trio.CapacityLimiter(LOOKUPS_AT_ONCE)
        self.refusal_log = RefusalLog()
        self.refusal_counts = RefusalCounts(self.write_refusals)
        # Seconds per stage of each call, kept only when a benchmark asks (a dict of lists).
        self.timings: dict[str, list[float]] | None = None

    # Change notices (db/notify.py): what they name is forgotten at once.
    def notice(self, notice: Notice) -> None:
        if notice.channel == SANDBOX_CHANGED:
            self.callers.forget_sandbox(notice.payload)
        elif notice.channel == LLM_QUOTA_CHANGED:
            self.callers.forget_workspace(notice.payload)

    def reset(self) -> None:
        self.callers.clear()

    def subscribe(self) -> None:
        for channel in (SANDBOX_CHANGED, LLM_QUOTA_CHANGED):
            self.deps.db.changes.subscribe(channel, self)

    def unsubscribe(self) -> None:
        for channel in (SANDBOX_CHANGED, LLM_QUOTA_CHANGED):
            self.deps.db.changes.unsubscribe(channel, self)

    def timed(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings.setdefault(stage, []).append(now - since)
        return now

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

    async def admit(self, scope: Scope, receive: Receive) -> tuple[Call, Request]:
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
            raise

    async def identify(self, token_hash: str) -> Caller | None:
        """The sandbox of a call refused before its token was looked at, if there is one."""
        await trio.lowlevel.checkpoint()
        try:
            return self.callers.get(token_hash) or await self.lookup(token_hash)
        except Refusal as refusal:
            return refusal.caller

    async def checked(self, scope: Scope, receive: Receive, seen: Seen) -> tuple[Call, Request]:
        started = time.perf_counter()
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
        self.timed("token check", started)
        if not (self.settings.anthropic_api_key or self.settings.anthropic_auth_token):
            raise Refusal(
                503, "the server has no Anthropic credentials configured", reason="no_credentials"
            )
        body = await read_body(receive, self.settings.llm_max_body, headers)
        requested = read_request(body, dict(headers).get(b"content-type", b"").decode("latin-1"))
        seen.model = requested.model
        check_model(self.settings, requested.model, required=route.names_model)
        try:
            request = build_request(
                scope["method"], url, upstream_headers(headers, self.settings), body
            )
        except InvalidRequest:
            raise Refusal(400, "the path or a header cannot be forwarded") from None
        admitting = time.perf_counter()
        endpoint = raw_path[len(PREFIX) :].decode("ascii", "replace")[:200] or "/"
        call = Call(caller, requested.model, scope["method"], endpoint)
        await self.take_limits(call, route, requested, len(body))
        self.timed("admission", admitting)
        self.record_activity(caller.sandbox_id)
        return call, request

    async def lookup(self, token_hash: str) -> Caller:
        """The sandbox of a token the cache does not know: one query, a few at once at most;
        a token that belongs to no sandbox is remembered briefly and costs no further query."""
        if token_hash in self.unknown:
            raise Refusal(401, "invalid api key", reason="unknown_token")
        epoch = self.callers.epoch
        async with self.lookups:
            found = await self.deps.db.one("llm_caller_by_token", Caller, token_hash=token_hash)
        if found is None:
            self.unknown.add(token_hash)
            former = self.callers.former(token_hash)
            if former is not None:  # its sandbox was deleted (or its token rotated) lately
                refusal = Refusal(401, "invalid api key", reason="token_revoked")
                refusal.caller = former
                raise refusal
        caller = check_caller(found)
        self.callers.put(token_hash, caller, epoch)
        return caller

    async def take_limits(
        self, call: Call, route: Route, requested: Requested, body_size: int
    ) -> None:
        """The workspace's limits, decided by the ledger in one step (no database in the common
        case): the call holds its reservation of the daily quota until its row is written."""
        await trio.lowlevel.checkpoint()
        caller = call.caller
        rpm, per_day = caller.limits(self.settings)
        if not (rpm or per_day):
            return
        reserved = reservation(route, requested, body_size, per_day)
        while self.ledger.needs_load(caller.workspace_id):
            await self.recorder.load(caller.workspace_id)
        incoming = input_estimate(body_size) if route.spends_tokens else 0
        call.ticket = self.ledger.admit(caller.workspace_id, rpm, per_day, reserved, incoming)

    async def forward(self, call: Call, request: Request, receive: Receive, send: Send) -> None:
        """Forward and answer; a sandbox that hangs up cancels the upstream call too."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_disconnect, receive, nursery.cancel_scope)
            await self.exchange(call, request, send)
            nursery.cancel_scope.cancel()

    async def exchange(self, call: Call, request: Request, send: Send) -> None:
        sending = time.perf_counter()
        try:
            response = await self.client.send(request)
            self.timed("upstream", sending)
        except UpstreamError as exc:
            log.warning("LLM upstream unreachable: %s", exc)
            call.status = 502
            # Recorded before the answer, like every other: the caller may read usage next.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.finish(call)
            await send_error(send, Refusal(502, "the Anthropic API could not be reached"))
            return
        try:
            call.status = response.status_code
            content_type = response.header(b"content-type") or b""
            call.streaming = b"text/event-stream" in content_type
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response_headers(response.headers),
                }
            )
            await self.pump(call, response, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await response.aclose()

    async def pump(self, call: Call, response: Answer, send: Send) -> None:
        """Pass each chunk on as soon as it arrives, reading usage from it on the way. The
        answer ends once its usage is recorded; the last chunk, when known to be the last,
        waits for that and goes out with the end (one write)."""
        end = b""
        try:
            async for chunk, last in response.chunks():
                call.observe(chunk)
                if last:
                    end = chunk
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            log.warning("LLM upstream broke off mid-answer: %s", exc)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await self.finish(call)
        await send({"type": "http.response.body", "body": end, "more_body": False})

    @staticmethod
    async def watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def finish(self, call: Call) -> None:
        """Hand the call's usage row to the recorder (once); its ticket now holds what it used."""
        if call.finished:
            await trio.lowlevel.checkpoint()
            return
        call.finished = True
        started = time.perf_counter()
        usage = call.usage()
        if call.ticket is not None:
            self.ledger.settle(call.ticket, usage.total_tokens)
        self.record_activity(call.caller.sandbox_id)
        await self.recorder.record(call.row(usage), call.ticket)
        self.timed("usage write", started)

    def record_activity(self, sandbox_id: str) -> None:
        self.deps.sandboxes.record_activity(sandbox_id)


@asynccontextmanager
async def open_llm_proxy(deps: Deps, client: Upstream) -> AsyncIterator[LlmProxy]:
    """The proxy with its usage recorder running; on the way out every recorded row is written
    (the recorder drains, shielded, by a deadline) before the database may close."""
    recorder = UsageRecorder(deps.db, Ledger())
    async with trio.open_nursery() as nursery:
        # Supervised: a bug in the writer is logged and it starts again, its rows still buffered.
        await nursery.start(supervise, "LLM usage recorder", recorder.run)
        proxy = LlmProxy(deps, client, recorder)
        proxy.subscribe()
        deps.pending_writes.add(recorder.flush)
        try:
            yield proxy
        finally:
            deps.pending_writes.discard(recorder.flush)
            proxy.unsubscribe()
            recorder.close()


def llm_middleware(app: ASGIApp, proxy: LlmProxy) -> ASGIApp:
    """Take /proxy/anthropic/* on the main host; everything else goes to `app` untouched."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_ours(scope):
            await proxy.handle(scope, receive, send)
        else:
            await app(scope, receive, send)

    return asgi


def _is_ours(scope: Scope) -> bool:
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return False
    host = next((v for k, v in scope["headers"] if k.lower() == b"host"), b"")
    return is_llm_request(path, host)


def is_llm_request(path: str, host: bytes) -> bool:
    """Whether a request (its decoded path and Host) is this proxy's: /proxy/anthropic/* on
    any host but a sandbox's. The front door serves such requests itself (serve.py)."""
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return False
    return not is_sandbox_host(host.decode("latin-1"))
