"""Kubernetes backend: each sandbox an agent-sandbox `Sandbox` (v1beta1), followed by a watch.

Every blocking client call is here, in worker threads under one CapacityLimiter (the watch has
a thread of its own, kube_watch.py); the objects themselves are built in kube_objects.py.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client as k8s
import kubernetes.config
import trio
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from agentserver.errors import BackendError, ConfigError
from agentserver.kinds import kind_of
from agentserver.sandboxes import kube_objects as ko
from agentserver.sandboxes.base import Endpoint, ExitNotice, Managed, SandboxSpec
from agentserver.sandboxes.containers import DISK
from agentserver.sandboxes.kube_objects import GROUP, PLURAL, VERSION, Obj
from agentserver.sandboxes.kube_watch import SandboxView, SandboxWatch, Update
from agentserver.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

KUBE_THREADS = 8
READY_TIMEOUT = 90.0  # below the lifecycle's own start deadline, so our reason wins
STOP_TIMEOUT = 50.0  # below the lifecycle's stop deadline
GONE_TIMEOUT = 30.0
LIST_TIMEOUT = (
    30.0  # the watch's first list at start  # how long a delete waits to see the Sandbox go
)
MERGE_PATCH = "application/merge-patch+json"
# A delete's answer is the object or a Status, depending on the resource and server: we need
# neither, so the client does not parse it.
NO_BODY: dict[str, Any] = {"_preload_content": False}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# A shutdownTime is moved only when activity would put it off by more than this.
KEEP_ALIVE_STEP = timedelta(minutes=5)

# Every (API group, resource, verb) this backend calls: the Helm chart's RBAC grants exactly
# these, and an integration test checks the API server saw nothing else. ("" is the core group.)
# Discovery (GET /apis) is a non-resource URL every authenticated client may read.
API_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        (GROUP, PLURAL, "create"),
        (GROUP, PLURAL, "list"),
        (GROUP, PLURAL, "watch"),
        (GROUP, PLURAL, "patch"),
        (GROUP, PLURAL, "delete"),
        ("", "namespaces", "create"),
        ("", "namespaces", "get"),
        ("", "namespaces", "delete"),
        ("", "secrets", "create"),
        ("", "secrets", "update"),
        ("", "secrets", "patch"),
        ("", "secrets", "delete"),
        ("", "persistentvolumeclaims", "create"),
        ("", "persistentvolumeclaims", "delete"),
        ("", "pods/log", "get"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("networking.k8s.io", "networkpolicies", "delete"),
    }
)


def status_message(exc: ApiException) -> str:
    """The message of the API's `Status` answer (or the HTTP reason)."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    return str(body.get("message") or exc.reason or exc.status)


def reason(exc: Exception, host: str) -> str:
    """A readable sentence for a failed API call (shown to users as the sandbox's reason)."""
    if isinstance(exc, ApiException):
        if exc.status == 422:
            return f"Kubernetes refused the object: {status_message(exc)}"
        return f"Kubernetes: {status_message(exc)} ({exc.status})"
    return f"Kubernetes API unreachable at {host}: {exc}"


def _ignore(status: int, fn: Callable[[], T]) -> T | None:
    """`fn()`, or None when the API answers `status` (404 gone, 409 exists)."""
    try:
        return fn()
    except ApiException as exc:
        if exc.status != status:
            raise
        return None


def load_configuration() -> k8s.Configuration:
    """In-cluster config inside a pod, else KUBECONFIG (or ~/.kube/config)."""
    configuration = k8s.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            kubernetes.config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        raise ConfigError(
            f"--backend kubernetes: no cluster configuration (in-cluster or KUBECONFIG): {exc}"
        ) from None
    return configuration


def check_api(api: k8s.ApiClient) -> None:
    """Discovery: the cluster answers and serves agent-sandbox's v1beta1 (ConfigError if not)."""
    host = api.configuration.host
    try:
        groups = k8s.ApisApi(api).get_api_versions(_request_timeout=10)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ConfigError(f"--backend kubernetes: {reason(exc, host)}") from None
    versions = {v.version for g in groups.groups or [] if g.name == GROUP for v in g.versions}
    if not versions:
        raise ConfigError(
            f"--backend kubernetes: the agent-sandbox CRDs are not installed at {host} "
            f"(no {GROUP} API group); install agent-sandbox v1.0 or later"
        )
    if VERSION not in versions:
        raise ConfigError(
            f"--backend kubernetes: {host} serves only {GROUP}/{', '.join(sorted(versions))}"
            f" (agent-sandbox before v1.0); agentserver needs {GROUP}/{VERSION}: upgrade"
            " agent-sandbox to v1.0 or later"
        )


def server_namespace(settings: Settings) -> str:
    if settings.kube_server_namespace:
        return settings.kube_server_namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


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
        # Typed as Any: the client takes our plain dict bodies (kube_objects.py) as they are.
        self._core: Any = k8s.CoreV1Api(api)
        self._custom: Any = k8s.CustomObjectsApi(api)
        self._net: Any = k8s.NetworkingV1Api(api)
        self._limiter = trio.CapacityLimiter(KUBE_THREADS)
        self._server_namespace = server_namespace(settings)
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
            await self._call(self._prepare_workspace, spec.workspace_id)
            self._prepared.add(spec.workspace_id)
        await self._call(self._put_secret, spec)
        obj = await self._call(self._put_sandbox, spec, datetime.now(UTC))
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
            self._patch_sandbox, meta["namespace"], meta["name"], ko.SUSPEND_PATCH
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
        await self._call(self._delete_sandbox, namespace, name, sandbox_id)
        with trio.move_on_after(GONE_TIMEOUT):
            await self._view.wait_for(lambda: sandbox_id not in self._view.objects)
            return
        log.warning("sandbox %s: its Sandbox object is still being deleted", sandbox_id)

    async def destroy_workspace(self, workspace_id: str) -> None:
        """Delete the workspace's disk, and its namespace when we made it."""
        self._prepared.discard(workspace_id)
        await self._call(self._delete_workspace, workspace_id)

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
        return await self._call(self._logs, obj["metadata"]["namespace"], obj, lines)

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
        patched = await self._call(self._patch_sandbox, meta["namespace"], meta["name"], patch)
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
            if sandbox_id in self._stopping or before is None or ko.pod_ip(before) is None:
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

    # -- blocking calls (worker threads only) ---------------------------------------------------

    def _prepare_workspace(self, workspace_id: str) -> None:
        """The workspace's namespace (unless one is configured), our policy in it, its disk."""
        namespace = self._namespace(workspace_id)
        if not self._settings.kube_namespace:
            body = ko.namespace_object(workspace_id, self._settings)
            _ignore(409, lambda: self._core.create_namespace(body))
        policy = ko.network_policy(self._settings, self._server_namespace)
        _ignore(409, lambda: self._net.create_namespaced_network_policy(namespace, policy))
        disk = ko.disk_object(workspace_id, self._settings)
        _ignore(409, lambda: self._core.create_namespaced_persistent_volume_claim(namespace, disk))

    def _put_secret(self, spec: SandboxSpec) -> None:
        namespace = self._namespace(spec.workspace_id)
        body = ko.secret_object(spec, self._settings)
        name = body["metadata"]["name"]
        if _ignore(409, lambda: self._core.create_namespaced_secret(namespace, body)) is None:
            self._core.replace_namespaced_secret(name, namespace, body)

    def _put_sandbox(self, spec: SandboxSpec, now: datetime) -> Obj:
        """Create the Sandbox, or run the one that exists (with the Secret as it is now)."""
        namespace = self._namespace(spec.workspace_id)
        body = ko.sandbox_object(spec, self._settings, now)
        created = _ignore(
            409,
            lambda: self._custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body
            ),
        )
        if created is not None:
            self._own_secret(namespace, spec.id, created)
            return dict(created)
        patch = ko.running_patch(spec.idle_timeout, now)
        return dict(
            self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                body["metadata"]["name"],
                patch,
                _content_type=MERGE_PATCH,
            )
        )

    def _own_secret(self, namespace: str, sandbox_id: str, sandbox: Obj) -> None:
        """The Secret belongs to its Sandbox: the cluster deletes it with the Sandbox."""
        owner = {
            "apiVersion": ko.API_VERSION,
            "kind": "Sandbox",
            "name": sandbox["metadata"]["name"],
            "uid": sandbox["metadata"]["uid"],
        }
        patch = {"metadata": {"ownerReferences": [owner]}}
        _ignore(
            404,
            lambda: self._core.patch_namespaced_secret(
                ko.secret_name(sandbox_id), namespace, patch
            ),
        )

    def _patch_sandbox(self, namespace: str, name: str, patch: Obj) -> Obj | None:
        found = _ignore(
            404,
            lambda: self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=MERGE_PATCH
            ),
        )
        return None if found is None else dict(found)

    def _delete_sandbox(self, namespace: str, name: str, sandbox_id: str) -> None:
        _ignore(
            404,
            lambda: self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            ),
        )
        secret = ko.secret_name(sandbox_id)
        _ignore(
            404, lambda: _drained(self._core.delete_namespaced_secret(secret, namespace, **NO_BODY))
        )

    def _delete_workspace(self, workspace_id: str) -> None:
        namespace = self._namespace(workspace_id)
        claim = ko.disk_claim(workspace_id, self._settings)
        _ignore(
            404,
            lambda: _drained(
                self._core.delete_namespaced_persistent_volume_claim(claim, namespace, **NO_BODY)
            ),
        )
        if self._settings.kube_namespace:
            return
        found = _ignore(404, lambda: self._core.read_namespace(namespace))
        labels = (found.metadata.labels or {}) if found is not None else {}
        if labels.get(ko.LABEL_MANAGED) == ko.MANAGED_BY:
            _ignore(404, lambda: _drained(self._core.delete_namespace(namespace, **NO_BODY)))
        elif found is not None:
            _ignore(
                404,
                lambda: _drained(
                    self._net.delete_namespaced_network_policy(ko.POLICY, namespace, **NO_BODY)
                ),
            )

    def _logs(self, namespace: str, obj: Obj, lines: int) -> str:
        try:
            text = self._core.read_namespaced_pod_log(
                obj["metadata"]["name"], namespace, container="agent", tail_lines=lines
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # no pod now (suspended), or not started yet
                return ""
            raise
        return str(text or "")


def _drained(response: Any) -> None:
    """Read a raw answer to its end, so its connection goes back to the pool."""
    response.read()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sandbox_lister(api: k8s.ApiClient, settings: Settings) -> Callable[..., Any]:
    """The list call for our Sandbox objects (in the one namespace, or in all)."""
    custom = k8s.CustomObjectsApi(api)
    if settings.kube_namespace:
        return partial(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            settings.kube_namespace,
            PLURAL,
            label_selector=ko.OURS,
        )
    return partial(
        custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, label_selector=ko.OURS
    )


@asynccontextmanager
async def open_backend(settings: Settings, on_exit: ExitNotice) -> AsyncIterator[KubernetesBackend]:
    """Connect (discovery first), follow our Sandboxes, and hand out the backend."""
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
