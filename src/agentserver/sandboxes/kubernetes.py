"""Kubernetes backend: each sandbox an agent-sandbox `Sandbox` (v1beta1), followed by a watch.

The blocking client calls (kube_calls.py) run here in worker threads under one
CapacityLimiter; the watch has a thread of its own (kube_watch.py); the objects themselves are
built in kube_objects.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import kubernetes.client as k8s
import trio
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from agentserver.errors import BackendError, ConfigError
from agentserver.kinds import kind_of
from agentserver.sandboxes import kube_objects as ko
from agentserver.sandboxes.base import Endpoint, ExitNotice, Managed, SandboxSpec
from agentserver.sandboxes.containers import DISK
from agentserver.sandboxes.kube_calls import (
    API_CALLS,
    ClusterCalls,
    check_api,
    load_configuration,
    reason,
    sandbox_lister,
)
from agentserver.sandboxes.kube_objects import GROUP, PLURAL, VERSION, Obj
from agentserver.sandboxes.kube_watch import SandboxView, SandboxWatch, Update
from agentserver.settings import Settings

__all__ = ["API_CALLS", "KubernetesBackend", "open_backend"]
log = logging.getLogger(__name__)
T = TypeVar("T")

KUBE_THREADS = 8
READY_TIMEOUT = 90.0  # below the lifecycle's own start deadline, so our reason wins
STOP_TIMEOUT = 50.0  # below the lifecycle's stop deadline
GONE_TIMEOUT = 30.0  # how long a delete waits to see the Sandbox go
LIST_TIMEOUT = 30.0  # the watch's first list at start
# A shutdownTime is moved only when activity would put it off by more than this.
KEEP_ALIVE_STEP = timedelta(minutes=5)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class KubernetesBackend:
    """Sandboxes as agent-sandbox `Sandbox` objects; their status comes from one watch."""

    name = "kubernetes"
    warnings: tuple[str, ...] = ()

    def __init__(
        self, api: k8s.ApiClient, settings: Settings, view: SandboxView, watch: SandboxWatch
    ) -> None:
        self._api = api
        self._settings = settings
        self._view = view
        self.watch = watch  # its counters tell tests (and logs) how often it reopened
        self._calls = ClusterCalls(api, settings)
        self._limiter = trio.CapacityLimiter(KUBE_THREADS)
        self._prepared: set[str] = set()  # workspaces whose namespace, policy and disk exist
        # Sandboxes we stop or delete on purpose: their going is not an exit.
        self._stopping: set[str] = set()
        self.ready_timeout = READY_TIMEOUT

    @property
    def view(self) -> SandboxView:
        """Our Sandbox objects as the watch last reported them."""
        return self._view

    def describe(self) -> str:
        where = self._settings.kube_namespace or f"{self._settings.kube_namespace_prefix}-*"
        runtime = self._settings.runtime_class or "the cluster's default runtime"
        return (
            f"kubernetes backend at {self._api.configuration.host}: agent-sandbox Sandboxes in "
            f"{where}, runtime {runtime} (image {self._settings.agent_image})"
        )

    def disk_path(self, workspace_id: str) -> str:
        return DISK

    def preview_endpoint(self, sandbox_id: str, agent: Endpoint, port: int) -> Endpoint | None:
        """Any port of the pod, at the pod's own address (the NetworkPolicy admits us)."""
        return Endpoint(host=agent.host, port=port)

    async def listening_ports(self, sandbox_id: str) -> list[int] | None:
        await trio.lowlevel.checkpoint()
        return None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking client call in a worker thread; its failures become BackendError."""
        try:
            return await trio.to_thread.run_sync(
                partial(fn, *args, **kwargs), limiter=self._limiter
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendError(reason(exc, self._api.configuration.host)) from exc

    def _namespace(self, workspace_id: str) -> str:
        return ko.namespace_for(workspace_id, self._settings)

    # -- lifecycle ------------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> Endpoint:
        return await self._start(spec)

    async def resume(self, spec: SandboxSpec) -> Endpoint:
        return await self._start(spec)

    async def _start(self, spec: SandboxSpec) -> Endpoint:
        existing = self._view.objects.get(spec.id)
        if existing is not None and not ko.suspended(existing):
            # Its pod runs with an older proxy token (a start redone after a restart): the pod
            # reads its Secret when it starts, so stop it first.
            await self.pause(spec.id)
        self._stopping.discard(spec.id)
        if spec.workspace_id not in self._prepared:
            await self._call(self._calls.prepare_workspace, spec.workspace_id)
            self._prepared.add(spec.workspace_id)
        await self._call(self._calls.put_secret, spec)
        obj = await self._call(self._calls.put_sandbox, spec, datetime.now(UTC))
        self._view.remember(obj)
        return await self._wait_ready(spec)

    async def _wait_ready(self, spec: SandboxSpec) -> Endpoint:
        def settled() -> bool:
            obj = self._view.objects.get(spec.id)
            return obj is not None and (ko.pod_ip(obj) is not None or ko.failure(obj) is not None)

        with trio.move_on_after(self.ready_timeout):
            await self._view.wait_for(settled)
        obj = self._view.objects.get(spec.id)
        address = None if obj is None else ko.pod_ip(obj)
        if obj is not None and address is not None:
            return Endpoint(host=address, port=kind_of(spec.type).port)
        failed = None if obj is None else ko.failure(obj)
        if failed is not None:
            raise BackendError(f"the sandbox failed: {failed}")
        raise BackendError(
            f"the sandbox did not become ready within {self.ready_timeout:g}s"
            f" ({ko.not_ready_text(obj)})"
        )

    async def pause(self, sandbox_id: str) -> None:
        """Suspended: the pod goes, the home and workspace disks stay."""
        obj = self._view.objects.get(sandbox_id)
        if obj is None:
            await trio.lowlevel.checkpoint()
            return
        self._stopping.add(sandbox_id)
        meta = obj["metadata"]
        patched = await self._call(
            self._calls.patch_sandbox, meta["namespace"], meta["name"], ko.SUSPEND_PATCH
        )
        if patched is not None:
            self._view.remember(patched)

        def stopped() -> bool:
            now = self._view.objects.get(sandbox_id)
            return now is None or ko.suspended(now)

        with trio.move_on_after(STOP_TIMEOUT):
            await self._view.wait_for(stopped)
            return
        raise BackendError(f"the sandbox's pod did not stop within {STOP_TIMEOUT:g}s")

    async def destroy(self, sandbox_id: str) -> None:
        """Delete the Sandbox (its home PVC goes with it) and its Secret."""
        obj = self._view.objects.get(sandbox_id)
        if obj is None:
            await trio.lowlevel.checkpoint()
            return
        self._stopping.add(sandbox_id)
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        await self._call(self._calls.delete_sandbox, namespace, name, sandbox_id)
        with trio.move_on_after(GONE_TIMEOUT):
            await self._view.wait_for(lambda: sandbox_id not in self._view.objects)
            return
        log.warning("sandbox %s: its Sandbox object is still being deleted", sandbox_id)

    async def destroy_workspace(self, workspace_id: str) -> None:
        """Delete the workspace's disk, and its namespace when we made it."""
        self._prepared.discard(workspace_id)
        await self._call(self._calls.delete_workspace, workspace_id)

    async def list_managed(self) -> list[Managed]:
        await self._view.listed.wait()
        found = []
        for sandbox_id, obj in self._view.objects.items():
            address = ko.pod_ip(obj)
            labels = obj["metadata"].get("labels") or {}
            endpoint = None
            if address is not None:
                port = kind_of(labels.get(ko.LABEL_TYPE, "opencode")).port
                endpoint = Endpoint(address, port)
            found.append(Managed(id=sandbox_id, running=endpoint is not None, endpoint=endpoint))
        return found

    async def logs(self, sandbox_id: str, lines: int = 200) -> str:
        obj = self._view.objects.get(sandbox_id)
        if obj is None:
            await trio.lowlevel.checkpoint()
            return ""
        return await self._call(self._calls.logs, obj["metadata"]["namespace"], obj, lines)

    async def keep_alive(self, sandbox_id: str) -> None:
        """Activity: put the sandbox's shutdownTime off (so the cluster stops only idle ones)."""
        obj = self._view.objects.get(sandbox_id)
        if obj is None or ko.suspended(obj) or sandbox_id in self._stopping:
            await trio.lowlevel.checkpoint()
            return
        idle = float((obj["metadata"].get("annotations") or {}).get(ko.ANNOTATION_IDLE) or 0)
        now = datetime.now(UTC)
        wanted = ko.shutdown_time(idle, now)
        current = obj["spec"].get("shutdownTime")
        if wanted is None or (
            current and _parse_time(wanted) - _parse_time(current) < KEEP_ALIVE_STEP
        ):
            await trio.lowlevel.checkpoint()
            return
        meta = obj["metadata"]
        patch = {"spec": {"shutdownTime": wanted}}
        patched = await self._call(
            self._calls.patch_sandbox, meta["namespace"], meta["name"], patch
        )
        if patched is not None:
            self._view.remember(patched)

    async def aclose(self) -> None:
        """Nothing to stop: Sandboxes keep running while no server is up (until shutdownTime)."""
        await trio.lowlevel.checkpoint()

    # -- following the watch --------------------------------------------------------------------

    async def follow(self, updates: trio.MemoryReceiveChannel[Update], on_exit: ExitNotice) -> None:
        """Apply the watch's updates to the view; report sandboxes that stop on their own."""
        exits: list[tuple[str, str]] = []

        def noticed(sandbox_id: str, before: Obj | None, now: Obj | None) -> None:
            ours = sandbox_id in self._stopping
            if now is None:
                self._stopping.discard(sandbox_id)  # gone: nothing of it to remember
            if ours or before is None or ko.pod_ip(before) is None:
                return
            if now is None:
                exits.append((sandbox_id, "its Sandbox object was deleted outside agentserver"))
            elif (why := ko.failure(now)) is not None:
                exits.append((sandbox_id, f"the sandbox stopped: {why}"))

        self._view.on_change = noticed
        async for update in updates:
            self._view.apply(update)
            while exits:
                sandbox_id, text = exits.pop(0)
                try:
                    await on_exit(sandbox_id, text)
                except Exception:
                    log.exception("exit notice for sandbox %s failed", sandbox_id)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@asynccontextmanager
async def open_backend(settings: Settings, on_exit: ExitNotice) -> AsyncIterator[KubernetesBackend]:
    """Connect (discovery first), follow our Sandboxes, and hand out the backend."""
    if urlsplit(settings.llm_proxy_url).hostname in LOOPBACK:
        log.warning(
            "ANTHROPIC_PROXY_URL is not set: sandbox pods would call %s, which is their own "
            "loopback; set it to agentserver's in-cluster URL (its Service)",
            settings.llm_proxy_url,
        )
    configuration = await trio.to_thread.run_sync(load_configuration)
    api = k8s.ApiClient(configuration)
    watch_api = k8s.ApiClient(configuration)  # the watch holds one connection of its own
    try:
        await trio.to_thread.run_sync(check_api, api)
        view = SandboxView()
        watch = SandboxWatch(sandbox_lister(watch_api, settings))
        backend = KubernetesBackend(api, settings, view, watch)
        send, receive = trio.open_memory_channel[Update](64)
        token = trio.lowlevel.current_trio_token()

        def deliver(update: Update) -> None:
            trio.from_thread.run(send.send, update, trio_token=token)

        async def run_watch() -> None:
            async with send:
                await trio.to_thread.run_sync(watch.run, deliver, abandon_on_cancel=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_watch)
            nursery.start_soon(backend.follow, receive, on_exit)
            with trio.move_on_after(LIST_TIMEOUT) as listing:
                await view.listed.wait()
            if listing.cancelled_caught:
                raise ConfigError(
                    f"--backend kubernetes: could not list {GROUP}/{VERSION} {PLURAL} at "
                    f"{configuration.host} within {LIST_TIMEOUT:g}s (see the log)"
                )
            try:
                yield backend
            finally:
                watch.stop()
                nursery.cancel_scope.cancel()
    finally:
        watch_api.close()  # type: ignore[no-untyped-call]
        api.close()  # type: ignore[no-untyped-call]
