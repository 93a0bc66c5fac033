"""The one object through which handlers reach the services of a running server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio

from agentserver.audit import AuditLog
from agentserver.auth.oidc import Provider
from agentserver.auth.pacing import AccountPacer
from agentserver.auth.throttle import Throttle
from agentserver.auth.throttle_table import DatabaseCounts, throttle_secret
from agentserver.auth.tickets import AccessCache
from agentserver.cluster import Cluster
from agentserver.db.database import Database
from agentserver.sandboxes.events import WorkspaceEvents
from agentserver.sandboxes.idle import IdleWatcher
from agentserver.sandboxes.reconciler import Reconciler
from agentserver.sandboxes.service import Sandboxes
from agentserver.sandboxes.tunnel_session import TunnelSessions
from agentserver.settings import Settings
from agentserver.tunnel.hub import Hub


class PendingWrites:
    """Writes made off the request path (LLM usage rows) that a reader must see: whoever buffers
    them adds its flush here, and a handler reading those tables awaits `flush` first."""

    def __init__(self) -> None:
        self._flushes: list[Callable[[], Awaitable[None]]] = []

    def add(self, flush: Callable[[], Awaitable[None]]) -> None:
        self._flushes.append(flush)

    def discard(self, flush: Callable[[], Awaitable[None]]) -> None:
        if flush in self._flushes:
            self._flushes.remove(flush)

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()
        for flush in list(self._flushes):
            await flush()


@dataclass(frozen=True, slots=True)
class Deps:
    """Shared services of one running server: built once by `serve.run`, read by every handler.

    A feature that is off is off by configuration: no OIDC providers is an empty mapping, no
    idle timeout or reconcile interval is `None`; nothing here is ever missing.
    """

    settings: Settings
    db: Database
    # Per-workspace sandbox events (the dashboard's stream; the proxy forgets what changed).
    events: WorkspaceEvents
    sandboxes: Sandboxes
    # The background loops of the lifecycle (None when configured off).
    idle_watcher: IdleWatcher | None
    reconciler: Reconciler | None
    # Local sandboxes' live tunnels on this server, and the sessions that serve them.
    hub: Hub
    tunnels: TunnelSessions
    # Who may reach which sandbox host, cached briefly; revoked when access ends.
    access: AccessCache
    # Sign in with GitHub / OIDC, by provider id (empty: password sign-in only).
    oidc_providers: Mapping[str, Provider]
    # Who did what, when: entries are queued here and stored in batches (audit/writer.py).
    audit: AuditLog
    # This replica among the others: its id, relay address and the relay credential's key.
    cluster: Cluster
    # What signed-in users should know about this server (e.g. sandboxes run unisolated).
    server_warnings: tuple[str, ...] = ()
    # The throttles below count in the database, where every replica sees them (built from
    # `db` and `cluster` by __post_init__; their limits may be changed in place, as tests do).
    # Failed sign-ins per client address: past the limit that address is refused for a while.
    login_throttle: Throttle = field(init=False)
    # Failed sign-ins per account: past the limit attempts are paced, never locked out.
    account_pacer: AccountPacer = field(init=False)
    # Password work (sign-in, registration) per client address, counted before any hashing.
    password_attempts: Throttle = field(init=False)
    # Wrong agent registration codes and command-line sign-ins started, per client address.
    code_throttle: Throttle = field(init=False)
    # Buffered writes (LLM usage) a reader of their tables waits for.
    pending_writes: PendingWrites = field(default_factory=PendingWrites)

    def __post_init__(self) -> None:
        counts = DatabaseCounts(self.db, throttle_secret(self.cluster.relay_secret))
        throttles = {
            "login_throttle": Throttle("login", limit=5, window=60.0, counts=counts),
            "account_pacer": AccountPacer(counts=counts),
            "password_attempts": Throttle("password-work", limit=30, window=60.0, counts=counts),
            "code_throttle": Throttle("agent-code", limit=10, window=60.0, counts=counts),
        }
        for name, throttle in throttles.items():
            object.__setattr__(self, name, throttle)  # frozen: set once, here
