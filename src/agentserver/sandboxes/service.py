"""The sandbox lifecycle service: create, pause, resume, restart, delete, wake, reconciliation.

Status changes are conditional updates checked against the table in lifecycle.py; slow backend
work (start, stop) runs in background operations owned by the service's nursery, one chain
per sandbox, each with a deadline. A failure leaves the sandbox `failed` with a reason the
user can read; nothing is deleted unless someone asked for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from agentserver.audit import Action, Actor, AuditLog, Result, Target
from agentserver.auth.tokens import hash_token, new_id, new_token
from agentserver.cluster import Cluster, Leases, new_replica_id
from agentserver.db.database import Database
from agentserver.errors import AgentServerError, Conflict, DatabaseUnavailable, Invalid, NotFound
from agentserver.models import Sandbox, SandboxType, Workspace
from agentserver.models import SandboxStatus as S
from agentserver.sandboxes import lifecycle
from agentserver.sandboxes.base import Backend, Endpoint, KeepsAlive, Managed, SandboxSpec
from agentserver.sandboxes.env_key import open_sealer
from agentserver.sandboxes.events import WorkspaceEvents
from agentserver.sandboxes.setup import SandboxSetup, Sealer
from agentserver.settings import Settings

log = logging.getLogger(__name__)
START_TIMEOUT = 120.0  # from start to a healthy agent
STOP_TIMEOUT = 60.0
ACTIVITY_EVERY = 30.0  # at most one activity write per sandbox this often
# How long a background operation keeps retrying the status write that ends it while the
# database is unavailable, and the first and longest pause between tries. After that the
# periodic reconciliation repairs the row.
SETTLE_FOR = 60.0
SETTLE_BACKOFF = (0.25, 8.0)


def duration_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class PauseCause:
    """Why a sandbox is paused: `idle` for `idle_seconds` without activity, or by `user` `by`."""

    kind: str
    by: str | None = None
    idle_seconds: float | None = None

    @classmethod
    def idle(cls, seconds: float) -> PauseCause:
        return cls("idle", idle_seconds=seconds)

    @classmethod
    def user(cls, user_id: str) -> PauseCause:
        return cls("user", by=user_id)


@dataclass(frozen=True, slots=True)
class IdleSandbox:
    """A running sandbox past its workspace's idle timeout (`idle_seconds`)."""

    id: str
    idle_seconds: float


class Operation:
    """One background operation on one sandbox; it waits for the one before it."""

    def __init__(self, previous: Operation | None) -> None:
        self.previous = previous
        self.scope = trio.CancelScope()
        self.done = trio.Event()


class Sandboxes:
    """The lifecycle of every sandbox on this server (`Deps.sandboxes`)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        backend: Backend,
        nursery: trio.Nursery,
        events: WorkspaceEvents | None = None,
        audit: AuditLog | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.db = db
        # What the lifecycle does by itself (idle pauses, wakes, restarts) is recorded here,
        # as the system; what members do is recorded by the API.
        self.audit = audit or AuditLog.off()
        self.settings = settings
        self.backend = backend
        self.events = events or WorkspaceEvents()
        self._nursery = nursery
        self._ops: dict[str, Operation] = {}
        self._touched: dict[str, float] = {}
        self.settle_for = SETTLE_FOR
        self._deleting: set[str] = set()
        self._activity_in, self._activity_out = trio.open_memory_channel[str](1024)
        self._sealer: Sealer | None = None
        # Across replicas, one operation per sandbox at a time (cluster/leases.py); alone, a
        # replica's leases are still claimed (by a name no other process has).
        self.replica_id = cluster.replica_id if cluster is not None else new_replica_id()
        self.leases = (
            Leases(db, self.replica_id, cluster.presence.dead_after)
            if cluster is not None
            else Leases(db, self.replica_id)
        )
        # The process backend's sandboxes are this replica's children: their rows say so.
        self.per_replica = bool(getattr(backend, "per_replica", False))

    async def sealer(self) -> Sealer:
        """The key of the sandboxes' environment variables: the configured one, or the one
        every replica shares in the database (sandboxes/env_key.py), looked up once."""
        if self._sealer is None:
            self._sealer = await open_sealer(self.db, self.settings)
        else:
            await trio.lowlevel.checkpoint()
        return self._sealer

    # -- reading ------------------------------------------------------------------------------
    async def get(self, sandbox_id: str) -> Sandbox | None:
        return await self.db.one("sbx_get", Sandbox, id=sandbox_id)

    async def require(self, sandbox_id: str) -> Sandbox:
        sandbox = await self.get(sandbox_id)
        if sandbox is None:
            raise NotFound("sandbox not found")
        return sandbox

    async def list(self, workspace_id: str) -> list[Sandbox]:
        return await self.db.many("sbx_list_workspace", Sandbox, workspace_id=workspace_id)

    def disk_path(self, sandbox: Sandbox) -> str | None:
        """Where the workspace's shared disk is inside this sandbox (None for a local sandbox,
        whose files are its developer's own machine)."""
        if sandbox.type == SandboxType.LOCAL:
            return None
        return self.backend.disk_path(sandbox.workspace_id)

    async def logs(self, sandbox_id: str, lines: int = 200) -> str:
        sandbox = await self.require(sandbox_id)
        if sandbox.type == SandboxType.LOCAL:
            return ""
        return await self.backend.logs(sandbox_id, lines)

    # -- status -------------------------------------------------------------------------------
    async def set_status(
        self,
        sandbox_id: str,
        expected: Iterable[str] | str,
        new: str,
        reason: str | None = None,
        endpoint: Endpoint | None = None,
    ) -> bool:
        """Move `sandbox_id` to `new` only if it is in an expected status; publish the change."""
        return await self._transition(sandbox_id, expected, new, reason, endpoint) is not None

    async def settle(
        self,
        sandbox_id: str,
        expected: Iterable[str] | str,
        new: str,
        reason: str | None = None,
        endpoint: Endpoint | None = None,
    ) -> bool:
        """`set_status` for the write that ends a background operation: while the database is
        unavailable it is tried again (for up to `settle_for` seconds) instead of being lost.

        A try whose answer was lost may have been written: a later try that matches no row
        then counts as done if the sandbox already shows `new`.
        """
        delay, retried = SETTLE_BACKOFF[0], False
        with trio.move_on_after(self.settle_for) as window:
            while True:
                try:
                    row = await self._transition(sandbox_id, expected, new, reason, endpoint)
                    if row is None and retried:
                        current = await self.get(sandbox_id)
                        return current is not None and current.status == S(new)
                    return row is not None
                except DatabaseUnavailable as exc:
                    log.warning(
                        "sandbox %s → %s not written (%s); trying again in %g s",
                        sandbox_id,
                        S(new).value,
                        exc.message,
                        delay,
                    )
                # Backoff between tries against a database that is down, not a wait for state.
                await trio.sleep(delay)
                delay, retried = min(delay * 2, SETTLE_BACKOFF[1]), True
        assert window.cancelled_caught
        raise DatabaseUnavailable(
            f"sandbox {sandbox_id} → {S(new).value} not written within {self.settle_for:g} s; "
            "the periodic reconciliation will repair it"
        )

    async def _transition(
        self,
        sandbox_id: str,
        expected: Iterable[str] | str,
        new: str,
        reason: str | None = None,
        endpoint: Endpoint | None = None,
        cause: PauseCause | None = None,
    ) -> Sandbox | None:
        statuses = lifecycle.check(expected, new)
        row = await self.db.one(
            "sbx_set_status",
            Sandbox,
            id=sandbox_id,
            new=S(new).value,
            reason=reason,
            expected=sorted(s.value for s in statuses),
            endpoint_host=endpoint.host if endpoint else None,
            endpoint_port=endpoint.port if endpoint else None,
            paused_reason=cause.kind if cause else None,
            paused_by=cause.by if cause else None,
            paused_idle_seconds=cause.idle_seconds if cause else None,
        )
        if row is not None:
            log.info("sandbox %s → %s%s", sandbox_id, row.status, f" ({reason})" if reason else "")
            self.publish(row)
        return row

    def publish(self, sandbox: Sandbox) -> None:
        """Tell the workspace's listeners about the sandbox's row as it is now (the API
        renders it for the browser)."""
        self.events.publish_nowait(sandbox.workspace_id, {"type": "sandbox", "sandbox": sandbox})

    # -- user actions -------------------------------------------------------------------------
    async def create(
        self,
        workspace_id: str,
        name: str,
        type_: str,
        created_by: str | None,
        private: bool = False,
        setup: SandboxSetup | None = None,
    ) -> Sandbox:
        """Record a new sandbox as `creating` (`private`: see auth/permissions.py) and start it
        in the background (`setup`: its environment variables and git repository)."""
        kind = SandboxType(type_)
        if kind == SandboxType.LOCAL:
            raise Invalid(
                "local sandboxes are registered by `agentserver agent connect`", field="type"
            )
        if (
            kind == SandboxType.OPENCLAW
            and self.settings.backend == "process"
            and not self.settings.openclaw_bin
        ):
            raise Invalid(
                "OpenClaw is unavailable on this server: it needs Node 24 or newer and "
                "no --openclaw-bin / OPENCLAW_BIN is configured",
                field="type",
            )
        sandbox = await self._insert(workspace_id, name, kind, created_by, private)
        if setup is not None:
            await self.db.exec(
                "sbx_setup_insert",
                sandbox_id=sandbox.id,
                env_names=sorted(setup.env),
                env_sealed=(await self.sealer()).seal(setup.env) if setup.env else None,
                git_url=setup.git_url,
                git_ref=setup.git_ref,
            )
        self.publish(sandbox)
        self._spawn(sandbox.id, self._start, sandbox.id, S.CREATING)
        return sandbox

    async def _insert(
        self,
        workspace_id: str,
        name: str,
        kind: SandboxType,
        created_by: str | None,
        private: bool = False,
    ) -> Sandbox:
        return await insert_sandbox(
            self.db,
            "sbx_insert",
            workspace_id=workspace_id,
            name=name,
            type=kind.value,
            created_by=created_by,
            private=private,
        )

    async def pause(
        self, sandbox_id: str, reason: str | None = None, cause: PauseCause | None = None
    ) -> Sandbox:
        """running → pausing now; the backend stops it in the background (→ paused). `cause`
        (idle, or a member) is kept until it runs again, for the wake page and the dashboard."""
        sandbox = await self.require(sandbox_id)
        if sandbox.type == SandboxType.LOCAL:
            raise Invalid("local sandboxes cannot be paused from the server")
        row = await self._transition(sandbox_id, lifecycle.PAUSABLE, S.PAUSING, reason, cause=cause)
        if row is None:
            raise lifecycle.refuse("paused", await self._status(sandbox_id))
        self._spawn(sandbox_id, self._pause, sandbox_id, reason)
        return row

    async def resume(self, sandbox_id: str) -> Sandbox:
        """paused or failed → resuming now; the backend starts it in the background (→ running)."""
        sandbox = await self.require(sandbox_id)
        if sandbox.type == SandboxType.LOCAL:
            raise Invalid("local sandboxes cannot be resumed from the server")
        row = await self._transition(sandbox_id, lifecycle.RESUMABLE, S.RESUMING)
        if row is None:
            raise lifecycle.refuse("resumed", await self._status(sandbox_id))
        self._spawn(sandbox_id, self._start, sandbox_id, S.RESUMING)
        return row

    async def restart(self, sandbox_id: str) -> Sandbox:
        """running or paused → resuming now; in the background the backend stops the agent and
        starts it again (→ running, or → failed with the reason)."""
        sandbox = await self.require(sandbox_id)
        if sandbox.type == SandboxType.LOCAL:
            raise Conflict(
                "a local sandbox's agent runs on its own machine: restart"
                " `agentserver agent connect` there"
            )
        row = await self._transition(sandbox_id, lifecycle.RESTARTABLE, S.RESUMING, "restarting")
        if row is None:
            raise lifecycle.refuse("restarted", await self._status(sandbox_id))
        self._spawn(sandbox_id, self._restart, sandbox_id)
        return row

    async def rename(self, sandbox_id: str, name: str) -> Sandbox:
        """Give the sandbox another name (Conflict: the workspace has one of that name)."""
        row = await self.db.one("sbx_rename", Sandbox, id=sandbox_id, name=name)
        if row is None:
            raise NotFound("sandbox not found")
        self.publish(row)
        return row

    async def wake(self, sandbox_id: str) -> None:
        """A request reached a paused sandbox: resume it in the background (no-op otherwise)."""
        sandbox = await self.get(sandbox_id)
        if sandbox is None or sandbox.type == SandboxType.LOCAL or sandbox.status != S.PAUSED:
            return
        row = await self._transition(sandbox_id, S.PAUSED, S.RESUMING, "woken by a request")
        if row is not None:
            self._spawn(sandbox_id, self._start, sandbox_id, S.RESUMING)
            await self.audit_system("proxy", Action.SANDBOX_RESUMED, row, "woken by a request")

    async def delete(self, sandbox_id: str) -> None:
        """Stop whatever runs (cancelling a start in progress), remove its files, then the row."""
        self._deleting.add(sandbox_id)  # the reconciler leaves it alone meanwhile
        try:
            await self._delete(sandbox_id)
        finally:
            self._deleting.discard(sandbox_id)

    async def _delete(self, sandbox_id: str) -> None:
        sandbox = await self.require(sandbox_id)
        await self._cancel_ops(sandbox_id)
        # An operation another replica runs on it gives up (its start would undo this delete).
        async with self.leases.hold(sandbox_id, supersede=True, wait=STOP_TIMEOUT) as held:
            if held is None:
                raise Conflict("another server is still working on this sandbox; try again")
            if not held:
                raise NotFound("sandbox not found")  # deleted by someone else meanwhile
            await self._remove(sandbox)

    async def _remove(self, sandbox: Sandbox) -> None:
        """Destroy the sandbox's backend object, then its row (holding its lease)."""
        sandbox_id = sandbox.id
        if sandbox.type != SandboxType.LOCAL:
            try:
                with trio.fail_after(STOP_TIMEOUT):
                    await self.backend.destroy(sandbox_id)
            except (AgentServerError, trio.TooSlowError) as exc:
                reason = (
                    f"delete failed: {getattr(exc, 'message', None) or 'the backend timed out'}"
                )
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await self._force_failed(sandbox_id, reason)
                raise
        await self.db.exec("sbx_delete", id=sandbox_id)
        self._touched.pop(sandbox_id, None)
        self.events.publish_nowait(
            sandbox.workspace_id,
            {
                "type": "sandbox_deleted",
                "sandbox_deleted": {"id": sandbox_id, "workspaceId": sandbox.workspace_id},
            },
        )

    async def delete_workspace_resources(self, workspace_id: str) -> None:
        """Every sandbox of the workspace, then its shared disk (before the workspace row goes)."""
        for sandbox in await self.list(workspace_id):
            with contextlib.suppress(NotFound):
                await self.delete(sandbox.id)
        await self.backend.destroy_workspace(workspace_id)
        self.events.close_workspace(workspace_id)

    def record_activity(self, sandbox_id: str) -> None:
        """Note traffic to a sandbox; never blocks, at most one write per sandbox per 30 s."""
        now = trio.current_time()
        if now - self._touched.get(sandbox_id, -ACTIVITY_EVERY) < ACTIVITY_EVERY:
            return
        self._touched[sandbox_id] = now
        try:
            self._activity_in.send_nowait(sandbox_id)
        except trio.WouldBlock:  # the writer is behind: activity is advisory, drop it
            self._touched.pop(sandbox_id, None)

    async def write_activity(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The one task that turns recorded activity into database writes."""
        task_status.started()
        async for sandbox_id in self._activity_out:
            try:
                await self.db.exec("sbx_touch", id=sandbox_id)
                if isinstance(self.backend, KeepsAlive):
                    await self.backend.keep_alive(sandbox_id)
            except AgentServerError as exc:
                log.warning("recording activity of %s failed: %s", sandbox_id, exc.message)

    async def on_exit(self, sandbox_id: str, reason: str) -> None:
        """The backend saw the agent stop on its own: show it as failed with the reason."""
        await self.settle(sandbox_id, {S.RUNNING, S.CREATING, S.RESUMING}, S.FAILED, reason)

    async def pause_idle(self, seconds: float) -> float | None:
        """Pause every sandbox idle longer than its workspace's timeout (`seconds` where the
        workspace has none of its own); return the seconds until the next check is due."""
        for idle in await self.db.many("sbx_list_idle", IdleSandbox, seconds=seconds):
            reason = f"paused after {duration_text(idle.idle_seconds)} without activity"
            with contextlib.suppress(Conflict, NotFound):  # someone else moved it first
                row = await self.pause(idle.id, reason, PauseCause.idle(idle.idle_seconds))
                await self.audit_system("idle watcher", Action.SANDBOX_PAUSED, row, reason)
        due = await self.db.scalar("sbx_next_idle_in", seconds=seconds)
        return None if due is None else float(due)

    async def audit_system(self, part: str, action: Action, sandbox: Sandbox, reason: str) -> None:
        """Record what the server did to a sandbox by itself (`part`: which loop)."""
        await self.audit.record(
            Actor.system(part),
            action,
            Target.of("sandbox", sandbox.id, sandbox.name),
            sandbox.workspace_id,
            Result.OK,
            reason=reason,
        )

    # -- reconciliation -----------------------------------------------------------------------
    async def reconcile(self, *, at_start: bool = False) -> None:
        """Make the database and the backend agree: restart, settle, or clean up.

        At start nothing runs yet. Later (periodically) operations may be under way: a sandbox
        with one in flight is left to it, each decision is made on a fresh read of its row,
        and every change is a conditional update, so a user's click can race this safely.
        """
        rows = await self.db.many("sbx_list_all", Sandbox)
        # Listed after the rows: a sandbox started meanwhile shows as live, never as missing.
        managed = {m.id: m for m in await self.backend.list_managed()}
        # Another live replica's operations and process sandboxes are that replica's to settle.
        held = {
            row["id"]
            for row in await self.db.rows(
                "sbx_held_elsewhere", replica=self.replica_id, dead_after=self.leases.dead_after
            )
        }
        # Process sandboxes other replicas started: after start, not for this one to restart.
        theirs = set() if at_start or not self.per_replica else await self._children_elsewhere()
        for sandbox in rows:
            found = managed.pop(sandbox.id, None)
            if sandbox.type == SandboxType.LOCAL:
                continue  # they follow tunnel ownership (sandboxes/tunnel_sweep.py), at start too
            if sandbox.id in held:
                mine = found is not None and found.running and not self._busy(sandbox.id)
                if self.per_replica and mine:
                    # Our child, but another replica runs it (or acts on it) now: stop ours.
                    await self._stop_quietly(sandbox.id)
                continue
            if sandbox.id in theirs and sandbox.status in (S.RUNNING, S.PAUSING):
                continue
            if not at_start:
                if self._busy(sandbox.id):
                    continue
                fresh = await self.get(sandbox.id)
                # Changed since the pass began: someone is acting on it, and what the backend
                # listed may already be stale; the next pass looks again.
                changed = fresh is None or (fresh.status, fresh.updated_at) != (
                    sandbox.status,
                    sandbox.updated_at,
                )
                if changed or self._busy(sandbox.id):
                    continue
            try:
                await self._reconcile_one(sandbox, found, at_start=at_start)
            except AgentServerError as exc:  # one sandbox's trouble does not stop the pass
                log.warning("reconciling sandbox %s failed: %s", sandbox.id, exc.message)
        for orphan in managed:
            # At start too: another replica may have created it after the rows were read.
            if self._busy(orphan) or orphan in held or await self.get(orphan) is not None:
                continue
            log.warning("removing sandbox %s: the backend holds it but no row exists", orphan)
            try:
                await self.backend.destroy(orphan)
            except AgentServerError as exc:
                log.warning("removing sandbox %s failed: %s", orphan, exc.message)

    async def _children_elsewhere(self) -> set[str]:
        rows = await self.db.rows("sbx_children_elsewhere", replica=self.replica_id)
        return {row["id"] for row in rows}

    def _busy(self, sandbox_id: str) -> bool:
        """An operation or a deletion is under way on the sandbox."""
        return sandbox_id in self._ops or sandbox_id in self._deleting

    async def _reconcile_one(
        self, sandbox: Sandbox, found: Managed | None, *, at_start: bool
    ) -> None:
        await trio.lowlevel.checkpoint()  # most branches only spawn, awaiting nothing
        status, sid = S(sandbox.status), sandbox.id
        live = found is not None and found.running
        endpoint = found.endpoint if found is not None and live else None
        if status == S.RUNNING and not live:
            why = "a server restart" if at_start else "its agent stopped unnoticed"
            if await self.set_status(sid, S.RUNNING, S.RESUMING, f"restarting after {why}"):
                self._spawn(sid, self._start, sid, S.RESUMING)
                await self.audit_system(
                    "reconciler", Action.SANDBOX_RESUMED, sandbox, f"restarted after {why}"
                )
        elif status in (S.CREATING, S.RESUMING) and endpoint is not None and not at_start:
            # Started, but the write saying so was lost (no operation is under way): it runs
            # with the token whose hash is stored, so record it running, not start it again.
            # (At start a half-done start is done again: its agent may never have answered.)
            await self.set_status(sid, status, S.RUNNING, endpoint=endpoint)
        elif status in (S.CREATING, S.RESUMING):
            self._spawn(sid, self._start, sid, status)
        elif status == S.PAUSING:
            self._spawn(sid, self._pause, sid, sandbox.status_reason)
        elif status in (S.PAUSED, S.FAILED) and live:
            await self.backend.pause(sid)  # nothing may run behind a stopped row

    # -- background operations ----------------------------------------------------------------
    def _spawn(self, sandbox_id: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        op = Operation(self._ops.get(sandbox_id))
        self._ops[sandbox_id] = op
        self._nursery.start_soon(self._run, sandbox_id, op, fn, args)

    async def _run(
        self,
        sandbox_id: str,
        op: Operation,
        fn: Callable[..., Awaitable[None]],
        args: tuple[Any, ...],
    ) -> None:
        try:
            with op.scope:
                if op.previous is not None:
                    await op.previous.done.wait()
                # Across replicas: after the operation another one runs on it; given up at once
                # when the lease is lost or another replica deletes the sandbox.
                async with self.leases.hold(sandbox_id, on_lost=op.scope.cancel) as held:
                    try:
                        if held:
                            await fn(*args)
                    finally:
                        self._finished(sandbox_id, op)  # done before the lease's release
        except Exception:
            log.exception("background operation on sandbox %s failed", sandbox_id)
        finally:
            self._finished(sandbox_id, op)
        # After the bookkeeping: a scope cancelled before it ran may have passed no checkpoint.
        await trio.lowlevel.checkpoint()

    def _finished(self, sandbox_id: str, op: Operation) -> None:
        op.previous = None
        op.done.set()
        if self._ops.get(sandbox_id) is op:
            del self._ops[sandbox_id]

    async def _cancel_ops(self, sandbox_id: str) -> None:
        op = self._ops.get(sandbox_id)
        chain = []
        while op is not None:
            chain.append(op)
            op.scope.cancel()
            op = op.previous
        for each in chain:
            await each.done.wait()
        await trio.lowlevel.checkpoint()  # the chain may be empty

    async def _start(self, sandbox_id: str, current: S) -> None:
        """Start (create or resume) the agent; → running, or → failed with the reason."""
        sandbox = await self.get(sandbox_id)
        if sandbox is None or sandbox.status != current:
            return
        if self.per_replica:  # its process will be this replica's child
            await self.db.exec("sbx_set_replica", id=sandbox_id, replica=self.replica_id)
        try:
            with trio.fail_after(START_TIMEOUT):
                spec = await self._spec(sandbox)
                start = self.backend.create if current == S.CREATING else self.backend.resume
                endpoint = await start(spec)
        except (AgentServerError, trio.TooSlowError) as exc:
            reason = getattr(exc, "message", None) or (
                f"the {sandbox.type} agent did not become ready within {START_TIMEOUT:g} s"
            )
            await self._stop_quietly(sandbox_id)
            await self.settle(sandbox_id, current, S.FAILED, reason)
            return
        if not await self.settle(sandbox_id, current, S.RUNNING, endpoint=endpoint):
            # Deleted, crashed or stopped meanwhile: leave no process nobody owns, and no
            # backend object at all without a row.
            await self._stop_quietly(sandbox_id)
            if await self.get(sandbox_id) is None:
                await self._destroy_quietly(sandbox_id)

    async def _stop_agent(self, sandbox_id: str) -> str | None:
        """Stop the sandbox's agent, keeping its files; why it failed, or None."""
        try:
            with trio.fail_after(STOP_TIMEOUT):
                await self.backend.pause(sandbox_id)
        except (AgentServerError, trio.TooSlowError) as exc:
            await trio.lowlevel.checkpoint()  # the backend may fail before it awaited anything
            return getattr(exc, "message", None) or "the backend did not stop it in time"
        return None

    async def _pause(self, sandbox_id: str, reason: str | None) -> None:
        if (failure := await self._stop_agent(sandbox_id)) is not None:
            await self.settle(sandbox_id, S.PAUSING, S.FAILED, f"pause failed: {failure}")
            return
        await self.settle(sandbox_id, S.PAUSING, S.PAUSED, reason)

    async def _restart(self, sandbox_id: str) -> None:
        """Stop the agent (whatever runs), then start it from its kept files."""
        if (failure := await self._stop_agent(sandbox_id)) is not None:
            await self.settle(sandbox_id, S.RESUMING, S.FAILED, f"restart failed: {failure}")
            return
        await self._start(sandbox_id, S.RESUMING)

    async def _spec(self, sandbox: Sandbox) -> SandboxSpec:
        """What the backend needs; mints a fresh proxy token (only its hash is ever stored)."""
        token = new_token()
        await self.db.exec("sbx_set_proxy_token", id=sandbox.id, proxy_token_hash=hash_token(token))
        setup = await self.setup_of(sandbox.id)
        return SandboxSpec(
            id=sandbox.id,
            workspace_id=sandbox.workspace_id,
            type=SandboxType(sandbox.type),
            agent_secret=sandbox.agent_secret,
            llm_base_url=self.settings.llm_proxy_url,
            proxy_token=token,
            env=setup.env,
            git_url=setup.git_url,
            git_ref=setup.git_ref,
            idle_timeout=await self._idle_timeout(sandbox.workspace_id),
        )

    async def _idle_timeout(self, workspace_id: str) -> float:
        """The idle timeout that applies to the workspace's sandboxes (0: never paused)."""
        if self.settings.idle_timeout <= 0:
            await trio.lowlevel.checkpoint()
            return 0.0
        workspace = await self.db.one("get_workspace", Workspace, id=workspace_id)
        if workspace is None or workspace.idle_timeout_seconds is None:
            return self.settings.idle_timeout
        return float(workspace.idle_timeout_seconds)

    async def setup_of(self, sandbox_id: str, *, values: bool = True) -> SandboxSetup:
        """What the sandbox was created with; without `values` the variables' values are
        left sealed (each name maps to "")."""
        rows = await self.db.rows("sbx_setup_get", sandbox_id=sandbox_id)
        if not rows:
            return SandboxSetup()
        row = rows[0]
        if values and row["env_sealed"] is not None:
            env = (await self.sealer()).open(bytes(row["env_sealed"]))
        else:
            env = dict.fromkeys(row["env_names"], "")
        return SandboxSetup(env=env, git_url=row["git_url"], git_ref=row["git_ref"])

    async def _stop_quietly(self, sandbox_id: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
            try:
                await self.backend.pause(sandbox_id)
            except AgentServerError as exc:
                log.warning("stopping sandbox %s failed: %s", sandbox_id, exc.message)
        # Stopped first (shielded), then a cancel point, as trio's own `aclose` methods do.
        await trio.lowlevel.checkpoint()

    async def _destroy_quietly(self, sandbox_id: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
            try:
                await self.backend.destroy(sandbox_id)
            except AgentServerError as exc:
                log.warning("removing sandbox %s failed: %s", sandbox_id, exc.message)
        await trio.lowlevel.checkpoint()

    async def _force_failed(self, sandbox_id: str, reason: str) -> None:
        """Show a failed backend operation on a sandbox in any status that may fail."""
        may_fail = [s for s in S if lifecycle.can(s, S.FAILED)]
        await self.set_status(sandbox_id, may_fail, S.FAILED, reason)

    async def _status(self, sandbox_id: str) -> str:
        sandbox = await self.require(sandbox_id)
        return sandbox.status


async def insert_sandbox(db: Database, query: str, **params: Any) -> Sandbox:
    """Insert a sandbox row with a fresh id and agent secret, drawing another id on a collision."""
    for attempt in range(3):
        try:
            sandbox = await db.one(
                query, Sandbox, id=new_id(), agent_secret=new_token(24), **params
            )
        except Conflict:  # a 16-character id collided: draw another
            if attempt == 2:
                raise
        else:
            assert sandbox is not None
            return sandbox
    raise AssertionError("unreachable")
