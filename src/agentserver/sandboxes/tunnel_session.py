"""The server's side of a local agent's tunnel: ownership, hub registration, status, heartbeat.

A replica that accepts a tunnel claims the sandbox in the database (cluster/owners.py) and
registers the tunnel in its hub under that generation; other replicas relay the sandbox's
requests here (proxy/relay.py). `running` / `offline` follow ownership, not one process's
memory, each written by a conditional UPDATE and published through the lifecycle service: a
sandbox is `running` while its current owner's tunnel is up, and becomes `offline` when that
tunnel ends unless a live replica owns a newer one. A superseded owner (a newer tunnel on any
replica) hears of it by a notice, or at its next heartbeat, and closes its tunnel. At start-up
and every presence interval, the ownership of dead replicas is removed and every running local
sandbox no live replica serves is marked offline (sandboxes/tunnel_sweep.py): so a replica
starting never marks another's live tunnels offline, and a dead owner's are offline within the
dead-replica interval.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from agentserver.audit import Action, Actor, AuditLog, Target
from agentserver.cluster import Cluster
from agentserver.cluster.owners import Owners
from agentserver.db.database import Database
from agentserver.errors import AgentServerError
from agentserver.models import Sandbox
from agentserver.sandboxes.agent_health import opencode_health
from agentserver.sandboxes.service import Sandboxes
from agentserver.sandboxes.tunnel_sweep import SUPERSEDED, TunnelSweep
from agentserver.settings import Settings
from agentserver.supervise import supervise
from agentserver.tunnel import (
    SERVER_RESTARTING,
    Hub,
    MessageLink,
    Role,
    Tunnel,
    TunnelClosed,
    masking,
    open_tunnel,
)
from agentserver.tunnel import Settings as TunnelSettings

log = logging.getLogger(__name__)

HEARTBEAT = 20.0  # tunnel pings and last_heartbeat_at, in seconds
# What the server accepts from agents. Large frames and credit: the per-frame Python cost, not
# the bytes copied, bounds bulk throughput (bench/bench_tunnel.py); 2 MiB per stream, granted
# back a megabyte at a time, keeps a download streaming without a pause for credit. A stream
# starts with 128 KiB and gets the rest at once while the tunnel's receive budget lasts, so an
# agent can never make the server hold more than budget + streams x 128 KiB for slow browsers.
TUNNEL_SETTINGS = TunnelSettings(
    max_frame_payload=256 * 1024,
    initial_window=128 * 1024,
    ping_interval=HEARTBEAT,
    stream_window=2 * 1024 * 1024,
)
STATUS_TIMEOUT = 10.0


@asynccontextmanager
async def open_tunnel_sessions(
    settings: Settings,
    db: Database,
    sandboxes: Sandboxes,
    audit: AuditLog | None = None,
    *,
    cluster: Cluster,
) -> AsyncIterator[TunnelSessions]:
    """The sessions of this replica's tunnels and their hub, after marking offline every local
    sandbox no live replica serves; the ownership sweep and watch run alongside. No tunnel
    outlives them (and so none outlives the lifecycle they write to)."""
    masking.install()  # agents' frames are masked: unmask them in C (tunnel/masking.py)
    hub = Hub()
    owners = Owners(db, cluster.presence)
    sweep = TunnelSweep(owners, hub, sandboxes, cluster.presence.interval)
    try:
        stale = await sweep.sweep()
        if stale:
            log.info("%d local sandbox(es) offline until their agents reconnect", len(stale))
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, "tunnel ownership sweep", sweep.run_sweeps)
            await nursery.start(supervise, "superseded tunnel watch", sweep.watch)
            try:
                yield TunnelSessions(settings, db, hub, sandboxes, audit, owners=owners)
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await hub.close_all()
    finally:
        owners.close()


class TunnelSessions:
    """Serves each agent's tunnel for as long as it lasts, keeping the sandbox's status true."""

    # Ask the agent's opencode `GET /global/health` on each heartbeat (agent_health.py); tests
    # driving an agent by hand, which answers no request, turn it off.
    probe_health = True

    def __init__(
        self,
        settings: Settings,
        db: Database,
        hub: Hub,
        sandboxes: Sandboxes,
        audit: AuditLog | None = None,
        *,
        owners: Owners,
    ) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.sandboxes = sandboxes
        self.audit = audit or AuditLog.off()
        # Which replica serves each local sandbox's tunnel (cluster/owners.py).
        self.owners = owners

    def tunnel_settings(self) -> TunnelSettings:
        """TUNNEL_SETTINGS with the configured stream cap and receive budget."""
        return replace(
            TUNNEL_SETTINGS,
            max_streams=self.settings.tunnel_max_streams,
            receive_budget=self.settings.tunnel_receive_budget,
        )

    async def serve(
        self,
        sandbox: Sandbox,
        token_hash: str,
        link: MessageLink,
        shared_ports: tuple[int, ...] = (),
        client_address: str | None = None,
    ) -> None:
        """Run one agent's tunnel until it ends (the agent sharing `shared_ports` as
        previews); its tasks live in the caller's task (`client_address`: where the agent
        connects from, for the audit log)."""
        # A tunnel closed at once may leave by `except*` with nothing awaited but shielded cleanup.
        await trio.lowlevel.checkpoint()
        hub = self.hub
        tunnel: Tunnel | None = None
        generation: int | None = None
        registered = False
        try:
            async with open_tunnel(
                link,
                role=Role.SERVER,
                settings=self.tunnel_settings(),
                send_timeout=self.settings.tunnel_send_timeout,
            ) as tunnel:  # the heartbeat below ends with the tunnel
                tunnel.stop_reason = SERVER_RESTARTING  # only the server stopping cancels it
                # Owned here from now on: another replica's tunnel for it is superseded.
                # Requests here that read the claim before the tunnel is registered wait.
                claim = hub.claiming(sandbox.id)
                try:
                    generation = await self.owners.claim(sandbox.id)
                    await hub.register(sandbox.id, tunnel, shared_ports, generation)
                    registered = True
                finally:
                    hub.settle(sandbox.id, claim)
                log.info(
                    "local agent of sandbox %s connected (generation %d)", sandbox.id, generation
                )
                await self.record(Action.AGENT_CONNECTED, sandbox, client_address)
                await self.sync_status(sandbox.id)
                await self.heartbeat(tunnel, sandbox.id, token_hash, generation)
        except* TunnelClosed as group:
            log.info("tunnel of sandbox %s ended: %s", sandbox.id, group.exceptions[0])
        finally:
            # A tunnel sent away by a drain moves: its row stays until the agent's new tunnel
            # (on another replica) takes it over, so the sandbox is never offline meanwhile
            # (requests wait for the new owner: proxy/relay.py); it goes when this replica does.
            moved = hub.draining and tunnel is not None and tunnel.going_away
            with trio.CancelScope(shield=True), trio.move_on_after(STATUS_TIMEOUT):
                if generation is not None and not moved:
                    await self.release(sandbox.id, generation)
                if registered and tunnel is not None and hub.unregister(sandbox.id, tunnel):
                    log.info("local agent of sandbox %s disconnected", sandbox.id)
                    await self.record(Action.AGENT_DISCONNECTED, sandbox, client_address)
                    await self.last_seen(sandbox.id, token_hash)
                    await self.sync_status(sandbox.id)
                hub.release_lock(sandbox.id)
            if tunnel is not None:
                hub.finish(tunnel)

    async def release(self, sandbox_id: str, generation: int) -> None:
        """Give up ownership of the sandbox's tunnel (unless a newer one took it over)."""
        try:
            await self.owners.release(sandbox_id, generation)
        except AgentServerError as exc:
            # The row then names a replica without this tunnel: relays to it are answered
            # "stale", and the sweep removes it once this replica is gone.
            log.warning("ownership of sandbox %s not released: %s", sandbox_id, exc.message)
            await trio.lowlevel.checkpoint()

    async def record(self, action: Action, sandbox: Sandbox, client_address: str | None) -> None:
        """An audit entry by the sandbox's agent about its own tunnel."""
        await self.audit.record(
            Actor.agent(sandbox.id, sandbox.name),
            action,
            Target.of("sandbox", sandbox.id, sandbox.name),
            sandbox.workspace_id,
            client_address=client_address,
        )

    async def heartbeat(
        self, tunnel: Tunnel, sandbox_id: str, token_hash: str, generation: int = 0
    ) -> None:
        """Record the agent as alive and whether its opencode answers; close the tunnel once its
        token is gone (sandbox deleted) or a newer tunnel owns the sandbox (missed notice)."""
        health: str | None = None  # `running` was just written with no reason
        while not tunnel.closed:
            try:
                alive = await self.db.exec(
                    "agent_heartbeat", id=sandbox_id, tunnel_token_hash=token_hash
                )
            except AgentServerError as exc:
                log.warning("heartbeat of sandbox %s not recorded: %s", sandbox_id, exc.message)
                alive = 1
            if not alive:
                log.info("sandbox %s was deleted: closing its tunnel", sandbox_id)
                await tunnel.aclose()
                return
            if not tunnel.going_away and not await self.still_owner(sandbox_id, generation):
                # (A tunnel moving away is superseded by design: its agent closes it once its
                # requests in flight are done.)
                log.info("tunnel of sandbox %s superseded: closing it", sandbox_id)
                await tunnel.aclose(SUPERSEDED)
                return
            if self.probe_health:
                health = await self.record_health(tunnel, sandbox_id, health)
            await trio.sleep(HEARTBEAT)
        await trio.lowlevel.checkpoint()  # the tunnel may have closed before the first beat

    async def last_seen(self, sandbox_id: str, token_hash: str) -> None:
        """Stamp the heartbeat as the tunnel ends: "last seen" is when it went, not a beat ago."""
        try:
            await self.db.exec("agent_heartbeat", id=sandbox_id, tunnel_token_hash=token_hash)
        except AgentServerError as exc:
            log.warning("last heartbeat of sandbox %s not recorded: %s", sandbox_id, exc.message)
            await trio.lowlevel.checkpoint()  # the error may come before anything was awaited

    async def still_owner(self, sandbox_id: str, generation: int) -> bool:
        """Whether this tunnel still owns the sandbox (True when the database cannot say)."""
        try:
            return await self.owners.still_owner(sandbox_id, generation)
        except AgentServerError as exc:
            log.warning("ownership of sandbox %s not checked: %s", sandbox_id, exc.message)
            await trio.lowlevel.checkpoint()  # the error may come before anything was awaited
            return True

    async def record_health(self, tunnel: Tunnel, sandbox_id: str, known: str | None) -> str | None:
        """Probe the agent's opencode; when the answer changed, write it as the status reason
        of the running sandbox (and tell the workspace). Returns the answer."""
        health = await opencode_health(tunnel)
        if health == known:
            return known
        try:
            row = await self.db.one("agent_set_health", Sandbox, id=sandbox_id, reason=health)
        except AgentServerError as exc:
            log.warning("health of sandbox %s not recorded: %s", sandbox_id, exc.message)
            return known
        if row is not None:
            log.info("local sandbox %s: %s", sandbox_id, health or "opencode answers")
            self.sandboxes.publish(row)
        return health

    async def sync_status(self, sandbox_id: str) -> None:
        """Write `running` or `offline` as the hub says *now*, one writer per sandbox at a time
        here; across replicas each write holds only while ownership agrees (cluster/owners.py),
        so an old tunnel's end never marks a sandbox offline that another replica serves."""
        async with self.hub.status_lock(sandbox_id):
            generation = self.hub.generation(sandbox_id)
            try:
                if generation is not None:
                    row = await self.owners.mark_running(sandbox_id, generation)
                else:
                    row = await self.owners.mark_offline(sandbox_id, "the local agent disconnected")
            except AgentServerError as exc:
                log.warning("status of sandbox %s not written: %s", sandbox_id, exc.message)
                await trio.lowlevel.checkpoint()  # the error may come before anything was awaited
                return
            if row is not None:
                log.info("sandbox %s → %s", sandbox_id, row.status)
                self.sandboxes.publish(row)
