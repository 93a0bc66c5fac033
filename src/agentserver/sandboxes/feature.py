"""The sandboxes feature: opens the chosen backend, reconciles, runs the idle watcher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import trio

from agentserver.db.database import Database
from agentserver.errors import ConfigError
from agentserver.sandboxes.base import Backend, ExitNotice
from agentserver.sandboxes.events import WorkspaceEvents
from agentserver.sandboxes.idle import IdleWatcher
from agentserver.sandboxes.reconciler import Reconciler
from agentserver.sandboxes.service import Sandboxes
from agentserver.settings import Settings
from agentserver.supervise import supervise


class Deps(Protocol):
    """What the feature needs from `agentserver.deps.Deps` (a higher layer it may not import)."""

    settings: Settings
    db: Database
    extras: dict[str, Any]


log = logging.getLogger(__name__)


def backend_opener(settings: Settings, on_exit: ExitNotice) -> AbstractAsyncContextManager[Backend]:
    """The backend named by --backend (imported only when chosen)."""
    if settings.backend == "process":
        from agentserver.sandboxes import process

        return process.open_backend(settings, on_exit)
    if settings.backend == "docker":
        from agentserver.sandboxes import docker

        return docker.open_backend(settings, on_exit)
    raise ConfigError(
        f"--backend / AGENTSERVER_BACKEND: the {settings.backend} backend is not "
        "available yet; use process or docker"
    )


@asynccontextmanager
async def open_sandboxes(deps: Deps) -> AsyncIterator[None]:
    """Feature opener (serve.FEATURES): the lifecycle service in `deps.extras["sandboxes"]`.

    Background operations run in this feature's own nursery, not the root one, so they end
    before the backend closes (a start racing the shutdown would otherwise touch a closed
    backend); whatever they leave half-done, the next start's reconciliation settles.
    """
    service: Sandboxes | None = None

    async def on_exit(sandbox_id: str, reason: str) -> None:
        if service is not None:
            await service.on_exit(sandbox_id, reason)
        else:  # an exit during startup, before the service exists
            await trio.lowlevel.checkpoint()

    async with backend_opener(deps.settings, on_exit) as backend, trio.open_nursery() as nursery:
        service = Sandboxes(deps.db, deps.settings, backend, nursery, WorkspaceEvents())
        # Each long-lived task is supervised: a bug in one is logged and it starts again,
        # instead of cancelling this nursery (and with it the server).
        await nursery.start(supervise, "activity writer", service.write_activity)
        await service.reconcile(at_start=True)
        if deps.settings.idle_timeout > 0:
            watcher = IdleWatcher(service, deps.settings.idle_timeout)
            await nursery.start(supervise, "idle watcher", watcher.run)
            deps.extras["idle_watcher"] = watcher
        if deps.settings.reconcile_interval > 0:
            reconciler = Reconciler(service, deps.settings.reconcile_interval)
            await nursery.start(supervise, "reconciler", reconciler.run)
            deps.extras["reconciler"] = reconciler
        deps.extras["sandboxes"] = service
        deps.extras["delete_workspace_resources"] = service.delete_workspace_resources
        # What signed-in users should know about this server (e.g. sandboxes run unisolated).
        deps.extras["server_warnings"] = tuple(getattr(backend, "warnings", ()))
        deps.extras["sandbox_summary"] = backend.describe()
        try:
            yield
        finally:
            service.events.close_all()
            nursery.cancel_scope.cancel()
            deps.extras.pop("sandboxes", None)
            deps.extras.pop("reconciler", None)
            deps.extras.pop("delete_workspace_resources", None)
            deps.extras.pop("server_warnings", None)
