"""The Host-dispatching ASGI middleware: `oc-{id}` / `claw-{id}` hosts go to their sandbox,
`p{port}-{id}` to a port inside it (a preview, proxy/previews.py).

It runs before any route matching. The main host goes to the API app unchanged. On a sandbox
host it owns the whole security model of architecture §7: ticket redemption at
`/_agentserver/auth` (proxy/sign_in.py), the per-sandbox cookie, role and Origin checks, the
sandbox's status (waking a paused one), and only then the proxy — with our cookies and the
client's Authorization removed and the agent's own credentials injected (a preview gets none
of ours, and keeps its own Authorization). Around it: any other name
under the base domain is a 404, every response carries a framing policy, a request body that
stops arriving is cut off (408), refused cookies are remembered briefly, and the lifecycle's
events make the upstream pool drop a paused, moved or deleted sandbox's connections.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from agentserver.auth.tickets import (
    SandboxAccess,
)
from agentserver.auth.tokens import hash_token
from agentserver.deps import Deps
from agentserver.errors import SandboxUnreachable
from agentserver.kinds import BY_NAME, authorization, types_of
from agentserver.models import Sandbox, SandboxStatus, SandboxType
from agentserver.proxy import guest, pages, previews
from agentserver.proxy.body_deadline import BodyDeadline
from agentserver.proxy.frame_policy import with_frame_policy
from agentserver.proxy.headers import (
    Forwarding,
    Headers,
    cookie_values,
    header,
    request_headers,
    websocket_headers,
)
from agentserver.proxy.http import (
    CANCEL_CONNECTION,
    RESPOND_NOW,
    Receive,
    RespondNow,
    Scope,
    Send,
    proxy_http,
    target_of,
)
from agentserver.proxy.previews import PublicAccess, PublicPorts
from agentserver.proxy.refused_tokens import RefusedTokens
from agentserver.proxy.relay import Relay, carries_relay
from agentserver.proxy.routing import Preview, Route, Target, Unknown, resolve
from agentserver.proxy.sign_in import AUTH_PATH, SignIn, respond
from agentserver.proxy.tunnel_upstream import PortNotShared
from agentserver.proxy.upstream import NotListening, Pool, Upstream, UpstreamTimeout
from agentserver.proxy.websocket import proxy_websocket, reject
from agentserver.sandboxes.events import Event
from agentserver.settings import Settings

log = logging.getLogger(__name__)
# The proxy tells the lifecycle about activity at most this often per sandbox (it throttles
# its own writes further); the hot path then costs one dict lookup.
ACTIVITY_EVERY = 5.0
_READ_METHODS = frozenset({"GET", "HEAD"})
# Which sandbox types each subdomain kind may reach (local sandboxes run opencode).
_KINDS = {name: types_of(name) for name in BY_NAME}
_UNKNOWN_PAGES = {"sandbox": pages.NOT_FOUND, "host": pages.UNKNOWN_HOST}
_WAKING = {SandboxStatus.PAUSED, SandboxStatus.PAUSING, SandboxStatus.RESUMING}


class SandboxService(Protocol):
    """What the proxy needs from the lifecycle service (`Deps.sandboxes`)."""

    async def wake(self, sandbox_id: str) -> None: ...

    def record_activity(self, sandbox_id: str) -> None: ...


class GuardedSend:
    """The ASGI `send` of one HTTP request on a sandbox host: every response head gets the
    framing policy (proxy/frame_policy.py), and `started` tells whether one went out."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            message["headers"] = with_frame_policy(list(message.get("headers", ())))
        await self._send(message)

    def respond_now(self, scope: Scope) -> RespondNow | None:
        """The server's RESPOND_NOW for this request (None: it has none), with our policy."""
        server_now: RespondNow | None = (scope.get("extensions") or {}).get(RESPOND_NOW)
        if server_now is None:
            return None

        def now(status: int, headers: Headers, body: bytes) -> bool:
            if self.started or not server_now(status, with_frame_policy(headers), body):
                return False
            self.started = True
            return True

        return now


def host_of(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"host":
            return bytes(value)
    return None


def cross_site(headers: Headers, own: frozenset[str]) -> bool:
    """True when a browser says the request comes from a page outside this sandbox's origin
    (sibling sandboxes are same-site, so SameSite cookies alone do not stop them)."""
    origin = header(headers, b"origin")
    if origin is not None:
        return origin.decode("latin-1").lower() not in own
    site = header(headers, b"sec-fetch-site")
    return site is not None and site not in (b"same-origin", b"none")


class SubdomainProxy:
    """ASGI middleware: sandbox hosts are proxied, every other host reaches `app`."""

    def __init__(self, app: Any, deps: Deps, pool: Pool) -> None:
        self.app = app
        self.deps = deps
        self.settings = deps.settings
        self.signing_in = SignIn(deps.settings, deps.db, self.page)
        self.cookie = self.signing_in.cookie
        self.access = deps.access
        self.sandboxes: SandboxService = deps.sandboxes
        self.hub = deps.hub
        self.refused = RefusedTokens()
        self.public = PublicPorts(deps.db)
        # Names under the base domain that configured URLs give the server itself.
        self.main_names = frozenset(
            name
            for url in (deps.settings.oidc_redirect_base_url, deps.settings.anthropic_proxy_url)
            if url and (name := urlsplit(url).hostname)
        )
        self.pool = pool
        # Local sandboxes whose tunnel another replica holds: relayed there (proxy/relay.py).
        self.relay = Relay(deps.cluster, deps.tunnels.owners, deps.hub, pool)
        self._touched: dict[str, float] = {}
        self._origins: dict[tuple[str, str], frozenset[str]] = {}  # per host and scheme
        deps.events.observe(self.sandbox_changed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            found = resolve(host_of(scope), self.settings.domain, self.main_names)
            if isinstance(found, Target | Preview):
                await self.handle(found, scope, receive, send)
                return
            if found is not None:
                await self.unknown_host(found, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def unknown_host(
        self, unknown: Unknown, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A name under the base domain that is no sandbox: 404, never the main site."""
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
        await self.page(scope, GuardedSend(send), _UNKNOWN_PAGES[unknown.what])

    def sandbox_changed(self, workspace_id: str, event: Event) -> None:
        """A sandbox's status or endpoint changed, or it was deleted: its idle connections
        and cached accesses go (the next request reads the new state); so do its public
        ports when one was made public or private."""
        kind = event.get("type")
        if kind == "previews":
            self.public.forget(event["previews"]["sandboxId"])
            return
        if kind not in ("sandbox", "sandbox_deleted"):
            return
        changed = event[kind]
        sandbox_id = changed.id if isinstance(changed, Sandbox) else changed["id"]
        self.pool.forget_sandbox(sandbox_id)
        self.access.forget(sandbox_id)
        self.public.forget(sandbox_id)

    # -- the request pipeline ---------------------------------------------------------------

    async def handle(self, target: Route, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        if websocket:
            await self.dispatch(target, scope, receive, send)
            return
        guarded = GuardedSend(send)
        deadline = BodyDeadline(receive, self.settings.proxy_body_timeout)
        await self.dispatch(target, scope, deadline.receive, guarded)
        if deadline.expired and not guarded.started:
            await self.page(scope, guarded, pages.BODY_TIMEOUT)

    async def dispatch(self, target: Route, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        headers: Headers = scope["headers"]
        method = "GET" if websocket else scope["method"]
        if websocket:
            await receive()  # websocket.connect
        credential = carries_relay(headers)
        if credential is not None:  # another replica's, or refused: never a browser's
            await self.relay.serve(target, scope, receive, send, credential, self.page)
            return
        if not websocket and scope["path"] == AUTH_PATH:
            await self.signing_in.redeem(target, scope, send)
            return
        port = target.port if isinstance(target, Preview) else None
        if port is not None and (refused := previews.port_refusal(port)) is not None:
            await self.page(scope, send, refused)
            return
        access: SandboxAccess | PublicAccess | None = await self.authenticate(target, headers)
        if port is not None and (access is None or access.read_only):
            access = await self.public.access(target.sandbox_id, port) or access
        if access is None:
            await self.signing_in.sign_in(target, scope, send, method, headers)
            return
        refusal = self.refusal(access, scope, method, headers)
        if refusal is not None:
            await self.page(scope, send, refusal)
            return
        if access.read_only and isinstance(target, Target) and target.kind == "opencode":
            if guest.refused(scope.get("raw_path") or scope["path"].encode()):
                await self.page(scope, send, pages.GUEST_HIDDEN)
                return
            scope = self.guest_view(scope)
            headers = scope["headers"]
        sandbox = access.sandbox
        upstream = await self.upstream_for(scope, send, sandbox, port, access)
        if upstream is None:
            return
        self.touch(sandbox.id)
        fwd = Forwarding(
            scope["client"][0] if scope.get("client") else None,
            self.settings.base_scheme,
            host_of(scope) or b"",
        )
        auth = self.agent_auth(sandbox) if port is None else None  # a preview gets none of ours
        # Signing out or losing membership cancels the request mid-way (an open terminal or
        # event stream ends with the access that opened it).
        with self.live(access, scope):
            if websocket:
                await proxy_websocket(
                    scope,
                    receive,
                    send,
                    upstream,
                    target_of(scope).decode("latin-1"),
                    websocket_headers(headers, auth, fwd),
                    lambda: self.touch(sandbox.id),
                )
                return
            outgoing = request_headers(headers, auth, fwd)

            async def unreachable(exc: SandboxUnreachable) -> None:
                await self.unreachable(scope, send, sandbox, exc, port)

            await proxy_http(
                scope,
                receive,
                send,
                upstream,
                outgoing,
                lambda: self.touch(sandbox.id),
                unreachable,
                send.respond_now(scope) if isinstance(send, GuardedSend) else None,
            )

    def live(
        self, access: SandboxAccess | PublicAccess, scope: Scope
    ) -> AbstractContextManager[object]:
        """The request, cancelled when the member's access ends (a public port's anonymous
        request has no member whose access could end)."""
        if isinstance(access, PublicAccess):
            return nullcontext()
        return self.access.live(access, (scope.get("extensions") or {}).get(CANCEL_CONNECTION))

    async def authenticate(self, target: Route, headers: Headers) -> SandboxAccess | None:
        """The access of the first valid sandbox cookie for THIS sandbox and subdomain kind
        (any kind of sandbox has previews)."""
        for token in cookie_values(headers, self.cookie)[:3]:
            digest = hash_token(token)
            key = (target.sandbox_id, digest)
            now = trio.current_time()
            if self.refused.refused(key, now):
                continue
            access = await self.access.get(target.sandbox_id, token, digest)
            if access is None:
                self.refused.remember(key, now)
            elif (
                isinstance(target, Preview)
                or access.sandbox.type in _KINDS[target.kind]  # StrEnum: str equality
            ):
                return access
        await trio.lowlevel.checkpoint()
        return None

    def refusal(
        self, access: SandboxAccess | PublicAccess, scope: Scope, method: str, headers: Headers
    ) -> pages.Page | None:
        """Why this member may not make this request, or None (a public port takes any
        request without our credentials: nothing of ours to forge from another site)."""
        own = self.own_origins(scope)
        if isinstance(access, PublicAccess) and scope["type"] == "http":
            return None
        if scope["type"] == "websocket":
            origin = header(headers, b"origin")
            if origin is None or origin.decode("latin-1").lower() not in own:
                return pages.CROSS_ORIGIN
            return pages.READ_ONLY if access.read_only else None
        if method not in _READ_METHODS:
            if cross_site(headers, own):
                return pages.CROSS_ORIGIN
            if access.read_only:
                return pages.READ_ONLY
        return None

    @staticmethod
    def guest_view(scope: Scope) -> Scope:
        """The request a guest may make of opencode: on its own project only (proxy/guest.py
        says why the directory and workspace selectors go)."""
        return {
            **scope,
            "query_string": guest.query_without_selectors(scope.get("query_string", b"")),
            "headers": guest.headers_without_selectors(scope["headers"]),
        }

    def own_origins(self, scope: Scope) -> frozenset[str]:
        host = (host_of(scope) or b"").decode("latin-1").lower()
        key = (host, scope.get("scheme", "http"))
        known = self._origins.get(key)
        if known is not None:
            return known
        if len(self._origins) >= 4096:
            self._origins.clear()
        schemes = {
            self.settings.base_scheme,
            {"ws": "http", "wss": "https"}.get(
                scope.get("scheme", "http"), scope.get("scheme", "http")
            ),
        }
        origins = self._origins[key] = frozenset(f"{s}://{host}" for s in schemes)
        return origins

    async def upstream_for(
        self,
        scope: Scope,
        send: Send,
        sandbox: Sandbox,
        port: int | None = None,
        access: SandboxAccess | PublicAccess | None = None,
    ) -> Upstream | None:
        """The way to the sandbox's agent (or to its `port`, a preview), or None after
        answering with a status page. A local sandbox whose tunnel another replica holds is
        reached through that replica (for `access`, the caller checked here)."""
        status = SandboxStatus(sandbox.status)
        if status is not SandboxStatus.RUNNING:
            self.access.forget(sandbox.id)  # the next reload must see the new status
        if sandbox.type == SandboxType.LOCAL and status in (
            SandboxStatus.RUNNING,
            SandboxStatus.OFFLINE,
        ):
            if (
                port is not None
                and self.hub.get(sandbox.id) is not None
                and port not in self.hub.shared_ports(sandbox.id)
            ):
                await self.page(scope, send, pages.PORT_NOT_ALLOWED)
                return None
            # Its tunnel here (a request a drain races goes where it moves), or on the replica
            # that holds it.
            relayed = await self.relayed(scope, sandbox, port, access)
            if relayed is None:
                await self.page(scope, send, pages.OFFLINE)
            return relayed
        if status is SandboxStatus.RUNNING:
            if sandbox.endpoint_host and sandbox.endpoint_port:
                if port is not None:
                    return await self.preview_upstream(scope, send, sandbox, port)
                await trio.lowlevel.checkpoint_if_cancelled()  # the hot path: no scheduler trip
                return self.pool.upstream(sandbox.endpoint_host, sandbox.endpoint_port, sandbox.id)
            await self.page(scope, send, pages.STARTING)
        elif status in _WAKING:
            # Only a person opening the page wakes a paused sandbox: background calls from a
            # tab left open (fetch, event streams) must not undo a pause.
            why = pages.pause_note(
                sandbox.paused_reason, sandbox.paused_by_name, sandbox.paused_idle_seconds
            )
            if status is not SandboxStatus.PAUSED or self.is_navigation(scope):
                await self.wake(sandbox.id)
                await self.page(scope, send, pages.WAKING, note=why)
            else:
                await self.page(scope, send, pages.PAUSED, note=why)
        elif status is SandboxStatus.CREATING:
            await self.page(scope, send, pages.STARTING)
        elif status is SandboxStatus.OFFLINE:
            await self.page(scope, send, pages.OFFLINE)
        else:
            await self.page(scope, send, pages.FAILED, reason=sandbox.status_reason)
        return None

    async def relayed(
        self,
        scope: Scope,
        sandbox: Sandbox,
        port: int | None,
        access: SandboxAccess | PublicAccess | None,
    ) -> Upstream | None:
        """The sandbox's tunnel on the replica that holds it, or None (nobody does)."""
        user_id = access.user_id if isinstance(access, SandboxAccess) else None
        read_only = access.read_only if access is not None else True
        host = host_of(scope) or b""
        return await self.relay.upstream(sandbox.id, host, user_id, read_only, port)

    async def preview_upstream(
        self, scope: Scope, send: Send, sandbox: Sandbox, port: int
    ) -> Upstream | None:
        """The way to `port` in a running sandbox, or None after a page saying why not."""
        found = previews.upstream_of(sandbox, port, self.deps.sandboxes.backend, self.pool)
        if isinstance(found, pages.Page):
            await self.page(scope, send, found)
            return None
        await trio.lowlevel.checkpoint_if_cancelled()
        return found

    @staticmethod
    def is_navigation(scope: Scope) -> bool:
        """A browser loading a page (not a script's fetch or event stream)."""
        return scope["type"] == "http" and pages.wants_html(scope["method"], scope["headers"])

    async def unreachable(
        self,
        scope: Scope,
        send: Send,
        sandbox: Sandbox,
        exc: SandboxUnreachable,
        port: int | None = None,
    ) -> None:
        """The agent (or the previewed `port`) did not answer: maybe the sandbox just paused or
        moved; look again."""
        self.access.forget(sandbox.id)
        fresh = await self.deps.db.one("proxy_get_sandbox", Sandbox, id=sandbox.id)
        if (
            fresh is not None
            and fresh.status != SandboxStatus.RUNNING
            and await self.upstream_for(scope, send, fresh, port) is None
        ):
            return  # answered with the status's page
        if port is not None and isinstance(exc, NotListening | PortNotShared):
            why = pages.not_listening(port) if isinstance(exc, NotListening) else None
            await self.page(scope, send, why or pages.PORT_NOT_ALLOWED)
            return
        log.info("sandbox %s unreachable: %s", sandbox.id, exc.message)
        page = pages.TIMEOUT if isinstance(exc, UpstreamTimeout) else pages.UNREACHABLE
        page = pages.BUSY if exc.status == pages.BUSY.status else page  # a full tunnel
        await self.page(scope, send, page)

    # -- answers ------------------------------------------------------------------------------

    async def page(
        self,
        scope: Scope,
        send: Send,
        page: pages.Page,
        reason: str | None = None,
        note: str | None = None,
    ) -> None:
        method = "GET" if scope["type"] == "websocket" else scope["method"]
        status, headers, body = pages.answer(
            page,
            method,
            scope["headers"],
            reason=reason,
            home=self.settings.main_url + "/workspaces",
            note=note,
        )
        if scope["type"] == "websocket":
            await reject(
                scope, send, status, pages.render_json(page, reason=reason), b"application/json"
            )
        else:
            await respond(send, status, headers, body)

    # -- the lifecycle ------------------------------------------------------------------------

    def agent_auth(self, sandbox: Sandbox) -> bytes:
        return authorization(sandbox.type, sandbox.agent_secret)

    def touch(self, sandbox_id: str) -> None:
        """Record activity, at most every few seconds per sandbox; never blocks."""
        now = trio.current_time()
        if now - self._touched.get(sandbox_id, -ACTIVITY_EVERY) < ACTIVITY_EVERY:
            return
        self._touched[sandbox_id] = now
        try:
            self.sandboxes.record_activity(sandbox_id)
        except Exception:  # activity is advisory: never fail a request over it
            log.exception("recording activity of %s failed", sandbox_id)

    async def wake(self, sandbox_id: str) -> None:
        await self.sandboxes.wake(sandbox_id)


@asynccontextmanager
async def open_pool(settings: Settings) -> AsyncIterator[Pool]:
    """The shared pool of connections to sandboxes' agents, closed with the server."""
    pool = Pool(header_timeout=settings.proxy_timeout)
    try:
        yield pool
    finally:
        pool.close()
