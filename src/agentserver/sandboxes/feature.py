"""The sandbox lifecycle, opened: the chosen backend, reconciliation, the idle watcher.

With several replicas the loops that must run once in the cluster (the idle watcher, the
reconciler, the sweep of dead replicas' process sandboxes) run only while this replica leads
(cluster/leader.py). The process backend's reconciler is the exception: a replica's child
processes are visible to it alone, so every replica reconciles its own. Every reconciliation
(the start-up one too, which runs on every replica) leaves alone what another live replica
works on or runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import trio

from agentserver.audit import AuditLog
from agentserver.cluster import HEARTBEAT, Cluster
from agentserver.db.database import Database
from agentserver.errors import ConfigError
from agentserver.sandboxes.base import Backend, ExitNotice
from agentserver.sandboxes.children import DeadReplicaSweep
from agentserver.sandboxes.events import WorkspaceEvents
from agentserver.sandboxes.idle import IdleWatcher
from agentserver.sandboxes.previews import PreviewWatcher
from agentserver.sandboxes.reconciler import Reconciler
from agentserver.sandboxes.service import Sandboxes
from agentserver.settings import Settings
from agentserver.supervise import supervise


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What `open_sandboxes` opens: the service and its background loops (None when off)."""

    service: Sandboxes
    idle_watcher: IdleWatcher | None
    reconciler: Reconciler | None
    # What signed-in users should know about the backend (e.g. sandboxes run unisolated).
    warnings: tuple[str, ...]
    # One line for the operator at start-up: what runs sandboxes, and how isolated.
    summary: str


log = logging.getLogger(__name__)


def backend_opener(settings: Settings, on_exit: ExitNotice) -> AbstractAsyncContextManager[Backend]:
    """The backend named by --backend (imported only when chosen)."""
    if settings.backend == "process":
        from agentserver.sandboxes import process

        return process.open_backend(settings, on_exit)
    if settings.backend == "docker":
        from agentserver.sandboxes import docker

        return docker.open_backend(settings, on_exit)
    if settings.backend == "kubernetes":
        from agentserver.sandboxes import kubernetes

        return kubernetes.open_backend(settings, on_exit)
    raise ConfigError(
        f"--backend / AGENTSERVER_BACKEND: the {settings.backend} backend is not "
        "available yet; use process, docker or kubernetes"
    )


@asynccontextmanager
async def open_sandboxes(
    settings: Settings,
    db: Database,
    events: WorkspaceEvents,
    audit: AuditLog | None = None,
    cluster: Cluster | None = None,
) -> AsyncIterator[Lifecycle]:
    """The lifecycle service over the configured backend, reconciled, with its loops running.

    Background operations run in this context's own nursery, not the root one, so they end
    before the backend closes (a start racing the shutdown would otherwise touch a closed
    backend); whatever they leave half-done, the next start's reconciliation settles.
    """
    service: Sandboxes | None = None

    async def on_exit(sandbox_id: str, reason: str) -> None:
        if service is not None:
            await service.on_exit(sandbox_id, reason)
        else:  # an exit during startup, before the service exists
            await trio.lowlevel.checkpoint()

    async with backend_opener(settings, on_exit) as backend, trio.open_nursery() as nursery:
        service = Sandboxes(db, settings, backend, nursery, events, audit, cluster)
        # The key of sandboxes' environment variables, settled before any is sealed or opened
        # (an old install's key file is adopted into the database here, at start).
        await service.sealer()
        # Each long-lived task is supervised: a bug in one is logged and it starts again,
        # instead of cancelling this nursery (and with it the server).
        await nursery.start(supervise, "activity writer", service.write_activity)
        await service.reconcile(at_start=True)
        # Open dashboards see the ports a running sandbox serves change (sandboxes/previews.py).
        previews = PreviewWatcher(service, events, db=db)  # with every replica (migration 0023)
        await nursery.start(supervise, "preview watcher", previews.run)

        async def once_in_cluster(name: str, run: Callable[..., Awaitable[None]]) -> None:
            if cluster is None:  # alone (tests of the lifecycle): always
                await nursery.start(supervise, name, run)
            else:
                await nursery.start(cluster.leader.while_leading, name, run)

        watcher = reconciler = None
        if settings.idle_timeout > 0:
            watcher = IdleWatcher(service, settings.idle_timeout)
            await once_in_cluster("idle watcher", watcher.run)
        if settings.reconcile_interval > 0:
            reconciler = Reconciler(service, settings.reconcile_interval)
            if service.per_replica:  # each replica's children are only its own to see
                await nursery.start(supervise, "reconciler", reconciler.run)
            else:
                await once_in_cluster("reconciler", reconciler.run)
        if cluster is not None and service.per_replica:
            sweep = DeadReplicaSweep(service, HEARTBEAT)
            await once_in_cluster("dead replicas' sandboxes", sweep.run)
        try:
            yield Lifecycle(
                service=service,
                idle_watcher=watcher,
                reconciler=reconciler,
                warnings=backend.warnings,
                summary=backend.describe(),
            )
        finally:
            events.close_all()
            nursery.cancel_scope.cancel()
