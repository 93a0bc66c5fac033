"""The server's side of a local agent's tunnel: hub registration, status, heartbeat.

While a local sandbox's tunnel is registered in the hub the sandbox is `running`; when the
registered tunnel ends it is `offline` again. Status goes through the lifecycle service like
every other sandbox's (one writer, one event per change). At start-up, before any agent can
connect, every local sandbox is marked offline: no tunnel survives a restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from agentserver.db.database import Database
from agentserver.errors import AgentServerError
from agentserver.models import Sandbox, SandboxStatus
from agentserver.sandboxes.agent_health import opencode_health
from agentserver.sandboxes.service import Sandboxes
from agentserver.settings import Settings
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
    settings: Settings, db: Database, sandboxes: Sandboxes
) -> AsyncIterator[TunnelSessions]:
    """The sessions of this server's tunnels and their hub, after marking every local sandbox
    offline; no tunnel outlives them (and so none outlives the lifecycle they write to)."""
    masking.install()  # agents' frames are masked: unmask them in C (tunnel/masking.py)
    hub = Hub()
    stale = await db.rows("agent_all_offline")
    if stale:
        log.info("%d local sandbox(es) offline until their agents reconnect", len(stale))
    try:
        yield TunnelSessions(settings, db, hub, sandboxes)
    finally:
        with trio.CancelScope(shield=True):
            await hub.close_all()


class TunnelSessions:
    """Serves each agent's tunnel for as long as it lasts, keeping the sandbox's status true."""

    # Ask the agent's opencode `GET /global/health` on each heartbeat (agent_health.py); tests
    # driving an agent by hand, which answers no request, turn it off.
    probe_health = True

    def __init__(self, settings: Settings, db: Database, hub: Hub, sandboxes: Sandboxes) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.sandboxes = sandboxes

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
    ) -> None:
        """Run one agent's tunnel until it ends (the agent sharing `shared_ports` as
        previews); its tasks live in the caller's task."""
        # A tunnel closed at once may leave by `except*` with nothing awaited but shielded cleanup.
        await trio.lowlevel.checkpoint()
        hub = self.hub
        tunnel: Tunnel | None = None
        registered = False
        try:
            async with open_tunnel(
                link,
                role=Role.SERVER,
                settings=self.tunnel_settings(),
                send_timeout=self.settings.tunnel_send_timeout,
            ) as tunnel:  # the heartbeat below ends with the tunnel
                tunnel.stop_reason = SERVER_RESTARTING  # only the server stopping cancels it
                await hub.register(sandbox.id, tunnel, shared_ports)
                registered = True
                log.info("local agent of sandbox %s connected", sandbox.id)
                await self.sync_status(sandbox.id)
                await self.heartbeat(tunnel, sandbox.id, token_hash)
        except* TunnelClosed as group:
            log.info("tunnel of sandbox %s ended: %s", sandbox.id, group.exceptions[0])
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STATUS_TIMEOUT):
                if registered and tunnel is not None and hub.unregister(sandbox.id, tunnel):
                    log.info("local agent of sandbox %s disconnected", sandbox.id)
                    await self.last_seen(sandbox.id, token_hash)
                    await self.sync_status(sandbox.id)
                hub.release_lock(sandbox.id)
            if tunnel is not None:
                hub.finish(tunnel)

    async def heartbeat(self, tunnel: Tunnel, sandbox_id: str, token_hash: str) -> None:
        """Record the agent as alive and whether its opencode answers; close the tunnel once its
        token is gone (sandbox deleted)."""
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
        """Write `running` or `offline` as the hub says *now*, one writer per sandbox at a time."""
        async with self.hub.status_lock(sandbox_id):
            if self.hub.get(sandbox_id) is not None:
                await self.set_status(sandbox_id, SandboxStatus.OFFLINE, SandboxStatus.RUNNING)
            else:
                await self.set_status(
                    sandbox_id,
                    SandboxStatus.RUNNING,
                    SandboxStatus.OFFLINE,
                    "the local agent disconnected",
                )

    async def set_status(
        self, sandbox_id: str, expected: str, new: str, reason: str | None = None
    ) -> None:
        try:
            await self.sandboxes.set_status(sandbox_id, expected, new, reason)
        except AgentServerError as exc:
            log.warning("status of sandbox %s not written: %s", sandbox_id, exc.message)
            await trio.lowlevel.checkpoint()  # the error may come before anything was awaited
