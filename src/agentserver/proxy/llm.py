"""The Anthropic proxy: a sandbox calls /proxy/anthropic/* with its token; we add the real key."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import trio

from agentserver.auth.tokens import hash_token
from agentserver.db.database import Tx
from agentserver.deps import Deps
from agentserver.errors import AgentServerError
from agentserver.proxy.usage import StreamUsage, Usage, parse_message
from agentserver.settings import Settings

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/proxy/anthropic"
ACTIVE = frozenset({"creating", "running"})
ANTHROPIC_VERSION = b"2023-06-01"
# A non-streamed answer is kept (besides being passed on) only up to this size to read its usage.
MAX_PARSED_BODY = 8 << 20
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never forwarded upstream: the sandbox's credential, our cookies, and what httpx sets itself.
_DROPPED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-api-key",
    b"authorization",
    b"cookie",
    b"accept-encoding",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
_SANDBOX_HOST = re.compile(r"^(oc|claw)-[a-z0-9]+\.")


class Refusal(Exception):
    """A call we answer ourselves, in Anthropic's error shape so SDK clients show the message."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class ClientGone(Exception):
    """The sandbox hung up before sending its whole request."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The sandbox a proxy token belongs to, and its workspace's limit overrides."""

    sandbox_id: str
    workspace_id: str
    created_by: str | None
    name: str
    status: str
    rpm_override: int | None = None
    tokens_per_day_override: int | None = None

    def limits(self, settings: Settings) -> tuple[int, int]:
        """Requests per minute and tokens per day that apply (0 = unlimited)."""
        rpm = settings.llm_rpm if self.rpm_override is None else self.rpm_override
        per_day = self.tokens_per_day_override
        return rpm, settings.llm_tokens_per_day if per_day is None else per_day


class CallerCache:
    """Recently seen active tokens, only to decide whether to read a body at all.

    The admission transaction looks the token up again, so a deleted or paused sandbox is
    refused at once; this only saves a database round trip before the body is read.
    """

    def __init__(self, ttl: float = 30.0, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[float, Caller]] = {}

    def get(self, token_hash: str) -> Caller | None:
        found = self._entries.get(token_hash)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def put(self, token_hash: str, caller: Caller) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()  # simplest bound; the next calls just look up again
        self._entries[token_hash] = (time.monotonic() + self.ttl, caller)

    def forget(self, token_hash: str) -> None:
        self._entries.pop(token_hash, None)


def error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def is_sandbox_host(host: str) -> bool:
    """`oc-{id}.…` and `claw-{id}.…` belong to the subdomain proxy, never to this one."""
    return bool(_SANDBOX_HOST.match(host.lower()))


def proxy_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The sandbox's token from `x-api-key`, else from `Authorization: Bearer`."""
    found = dict(headers)
    if found.get(b"x-api-key"):
        return found[b"x-api-key"].decode("latin-1").strip()
    scheme, _, value = found.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def upstream_url(settings: Settings, raw_path: bytes, query: bytes) -> str:
    """The base URL (its path kept) + the path after our prefix + the query string."""
    rest = raw_path[len(PREFIX) :].decode("ascii", "replace") or "/"
    if not rest.startswith("/"):
        raise Refusal(404, "no such route")
    if any(part in (".", "..") for part in unquote(rest).split("/")):
        raise Refusal(400, "the path may not contain . or .. segments")
    url = settings.anthropic_base_url.rstrip("/") + rest
    return url + ("?" + query.decode("ascii", "replace") if query else "")


def upstream_headers(
    headers: list[tuple[bytes, bytes]], settings: Settings
) -> list[tuple[bytes, bytes]]:
    """The sandbox's headers minus hop-by-hop and its credential, plus the real credential."""
    connection = b",".join(v for k, v in headers if k == b"connection")
    dropped = _DROPPED | {t.strip().lower() for t in connection.split(b",") if t.strip()}
    out = [(k, v) for k, v in headers if k not in dropped]
    if settings.anthropic_api_key:
        out.append((b"x-api-key", settings.anthropic_api_key.encode()))
    if settings.anthropic_auth_token:
        out.append((b"authorization", b"Bearer " + settings.anthropic_auth_token.encode()))
    if not any(k == b"anthropic-version" for k, _ in out):
        out.append((b"anthropic-version", ANTHROPIC_VERSION))
    # Identity, so the usage in the answer can be read as it passes.
    out.append((b"accept-encoding", b"identity"))
    return out


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream's headers minus hop-by-hop ones and Content-Length: the answer is re-framed as
    chunked so it ends only after its usage is recorded (a caller's next request sees it)."""
    connection = b",".join(v for k, v in headers if k.lower() == b"connection")
    dropped = HOP_BY_HOP | {b"content-length"}
    dropped |= {t.strip().lower() for t in connection.split(b",") if t.strip()}
    return [(k.lower(), v) for k, v in headers if k.lower() not in dropped]


def request_model(body: bytes, content_type: str) -> str | None:
    """The `model` of a JSON request body; malformed JSON is refused with a clear 400."""
    if not body or ("json" not in content_type and content_type):
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refusal(400, "the request body is not valid JSON") from None
    model = document.get("model") if isinstance(document, dict) else None
    return model if isinstance(model, str) else None


def check_model(settings: Settings, model: str | None) -> None:
    allowed = settings.llm_models
    if allowed and model is not None and not any(fnmatch.fnmatchcase(model, p) for p in allowed):
        raise Refusal(403, f"model {model!r} is not allowed on this server")


def check_caller(caller: Caller | None) -> Caller:
    if caller is None:
        raise Refusal(401, "invalid api key")
    if caller.status not in ACTIVE:
        raise Refusal(403, f"sandbox is not active (it is {caller.status})")
    return caller


def check_limits(rpm: int, per_day: int, load: dict[str, Any]) -> None:
    """Refuse with 429 when the workspace is over its per-minute or per-day limit."""
    if rpm and load["recent_requests"] >= rpm:
        raise Refusal(
            429,
            f"this workspace may make {rpm} LLM requests per minute",
            retry_after=max(1, load["window_frees_in"]),
        )
    if per_day and load["tokens_today"] >= per_day:
        raise Refusal(
            429,
            f"this workspace used its {per_day} LLM tokens for today (UTC)",
            retry_after=max(1, load["day_ends_in"]),
        )


async def read_body(receive: Receive, limit: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole request body, counted as it arrives: a lying Content-Length cannot get past."""
    declared = dict(headers).get(b"content-length", b"").strip()
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(413, f"the request body is larger than {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise Refusal(413, f"the request body is larger than {limit} bytes")
        if not message.get("more_body"):
            return bytes(body)


async def send_error(send: Send, refusal: Refusal) -> None:
    headers = [(b"content-type", b"application/json")]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(refusal.retry_after).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": error_body(refusal.status, refusal.message)})


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

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.callers = CallerCache()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            call, request = await self.admit(scope, receive)
        except Refusal as refusal:
            await send_error(send, refusal)
            return
        except ClientGone:
            await trio.lowlevel.checkpoint()
            return
        except AgentServerError as exc:
            log.warning("LLM proxy refused a call: %s", exc.message)
            await send_error(send, Refusal(503, "the server cannot check the proxy token now"))
            return
        try:
            await self.forward(call, request, receive, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.finish(call)

    async def admit(self, scope: Scope, receive: Receive) -> tuple[Call, httpx.Request]:
        """Every check before anything leaves for Anthropic; returns the call and its request."""
        headers: list[tuple[bytes, bytes]] = [(k.lower(), v) for k, v in scope["headers"]]
        token = proxy_token(headers)
        if token is None:
            raise Refusal(401, "missing api key: send the sandbox's proxy token in x-api-key")
        token_hash = hash_token(token)
        caller = self.callers.get(token_hash)
        if caller is None:
            found = await self.deps.db.one("llm_caller_by_token", Caller, token_hash=token_hash)
            caller = check_caller(found)
            self.callers.put(token_hash, caller)
        if not (self.settings.anthropic_api_key or self.settings.anthropic_auth_token):
            raise Refusal(503, "the server has no Anthropic credentials configured")
        url = upstream_url(
            self.settings,
            scope.get("raw_path") or scope["path"].encode(),
            scope.get("query_string", b""),
        )
        body = await read_body(receive, self.settings.llm_max_body, headers)
        model = request_model(body, dict(headers).get(b"content-type", b"").decode("latin-1"))
        check_model(self.settings, model)
        client: httpx.AsyncClient | None = self.deps.extras.get("llm_client")
        if client is None:
            raise Refusal(503, "the LLM proxy is not running")
        try:
            request = client.build_request(
                scope["method"], url, content=body, headers=upstream_headers(headers, self.settings)
            )
        except (httpx.InvalidURL, UnicodeError):
            raise Refusal(400, "the path or a header cannot be forwarded") from None
        call = Call(caller, model)
        try:
            call.row_id = await self.deps.db.transaction(
                lambda tx: self.start_row(tx, scope, call, token_hash)
            )
        except Refusal as refusal:
            if refusal.status in (401, 403):
                self.callers.forget(token_hash)
            raise
        self.record_activity(caller.sandbox_id)
        return call, request

    def start_row(self, tx: Tx, scope: Scope, call: Call, token_hash: str) -> int:
        """Admission in one transaction: the token again (it may be revoked by now), the
        limits under the workspace's lock, and the usage row that counts this call."""
        caller = check_caller(tx.one("llm_caller_by_token", Caller, token_hash=token_hash))
        call.caller = caller
        rpm, per_day = caller.limits(self.settings)
        if rpm or per_day:
            tx.exec("llm_lock_workspace", workspace_id=caller.workspace_id)
            load = tx.rows("llm_workspace_load", workspace_id=caller.workspace_id)[0]
            check_limits(rpm, per_day, load)
        endpoint = scope["path"][len(PREFIX) :][:200] or "/"
        row_id: int = tx.scalar(
            "llm_usage_start",
            sandbox_id=caller.sandbox_id,
            workspace_id=caller.workspace_id,
            user_id=caller.created_by,
            sandbox_name=caller.name,
            method=scope["method"],
            endpoint=endpoint,
            model=call.model,
            streaming=False,
        )
        return row_id

    async def forward(
        self, call: Call, request: httpx.Request, receive: Receive, send: Send
    ) -> None:
        """Forward and answer; a sandbox that hangs up cancels the upstream call too."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_disconnect, receive, nursery.cancel_scope)
            await self.exchange(call, request, send)
            nursery.cancel_scope.cancel()

    async def exchange(self, call: Call, request: httpx.Request, send: Send) -> None:
        client: httpx.AsyncClient = self.deps.extras["llm_client"]
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            log.warning("LLM upstream unreachable: %s", type(exc).__name__)
            call.status = 502
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
        sandboxes = self.deps.extras.get("sandboxes")
        if sandboxes is not None and hasattr(sandboxes, "record_activity"):
            sandboxes.record_activity(sandbox_id)


@asynccontextmanager
async def open_llm_proxy(deps: Deps) -> AsyncIterator[None]:
    """The upstream HTTP client: a bounded connect, no read timeout (answers stream for minutes)."""
    timeout = httpx.Timeout(None, connect=10.0, pool=30.0)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False) as client:
        deps.extras["llm_client"] = client
        try:
            yield
        finally:
            deps.extras.pop("llm_client", None)


def llm_middleware(app: ASGIApp, deps: Deps) -> ASGIApp:
    """Take /proxy/anthropic/* on the main host; everything else goes to `app` untouched."""
    proxy = LlmProxy(deps)

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
