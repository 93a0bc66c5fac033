"""Docker backend: a container per sandbox, named volumes for its home and the workspace disk."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import docker
import docker.errors
import httpx
import requests.exceptions
import trio
from docker.models.containers import Container

from agentserver.errors import BackendError
from agentserver.sandboxes.agent_start import until_answers
from agentserver.sandboxes.base import Endpoint, ExitNotice, Managed, SandboxSpec
from agentserver.sandboxes.containers import (
    DISK,
    LABEL_MANAGED,
    LABEL_SANDBOX,
    LABEL_TYPE,
    LABEL_WORKSPACE,
    MANAGED_BY,
    agent_port,
    container_config,
    container_name,
    docker_time,
    exit_reason,
    home_volume,
    start_archive,
    workspace_volume,
)
from agentserver.sandboxes.listening import listening_ports
from agentserver.sandboxes.readiness import answers
from agentserver.sandboxes.setup import CLONE_IN_CONTAINER, clone_environment
from agentserver.settings import Settings
from agentserver.supervise import supervise

log = logging.getLogger(__name__)
T = TypeVar("T")

DOCKER_THREADS = 8
READY_TIMEOUT = 90.0  # below the lifecycle's own start deadline, so our reason wins
PROBE_TIMEOUT = 5.0  # one readiness request; others start meanwhile (agent_start.py)
STOP_TIMEOUT = 10  # seconds Docker waits after SIGTERM before it kills
EVENTS_RETRY = (0.5, 30.0)  # backoff bounds when the event stream breaks (daemon restart)
OURS = f"{LABEL_MANAGED}={MANAGED_BY}"


def reason(exc: Exception) -> str:
    """A readable sentence for a Docker failure (shown to users as the sandbox's reason)."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return f"Docker image not found: {_explanation(exc)} (build it or set AGENT_IMAGE)"
    if isinstance(exc, docker.errors.APIError):
        return f"Docker: {_explanation(exc)}"
    if isinstance(exc, requests.exceptions.RequestException | docker.errors.DockerException):
        return f"Docker daemon unreachable at {docker_host()}: {exc}"
    return f"Docker: {exc}"


def _explanation(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect() -> docker.DockerClient:
    """A client from the standard environment (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise BackendError(
            f"Docker daemon unreachable at {docker_host()} ({exc}); start Docker, set DOCKER_HOST, "
            "or use --backend process"
        ) from None
    return client


def _missing(fn: Callable[[], T]) -> T | None:
    """`fn()`, or None when Docker says the thing does not exist."""
    try:
        return fn()
    except docker.errors.NotFound:
        return None


class DockerBackend:
    """Sandboxes as containers on one Docker host. Docker calls run in worker threads."""

    name = "docker"
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        network, image = self._settings.docker_network, self._settings.agent_image
        return f"docker backend, a container each on network {network} (image {image})"

    def disk_path(self, workspace_id: str) -> str:
        return DISK

    def preview_endpoint(self, sandbox_id: str, agent: Endpoint, port: int) -> Endpoint | None:
        """The container's address and `port` (its agent's own port is no preview)."""
        return None if port == agent.port else Endpoint(agent.host, port)

    async def listening_ports(self, sandbox_id: str) -> list[int] | None:
        """What listens in the container's network namespace, its agent left out; read
        inside it (docker exec), so it holds on a remote Docker host too."""
        return await self._call(self._listening_ports, sandbox_id)

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._limiter = trio.CapacityLimiter(DOCKER_THREADS)
        # Sandboxes we stopped or removed on purpose: their `die` events are not crashes.
        self._stopping: set[str] = set()
        self._watch_scope: trio.CancelScope | None = None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking Docker call in a worker thread; Docker failures become BackendError."""
        try:
            return await trio.to_thread.run_sync(
                partial(fn, *args, **kwargs), limiter=self._limiter
            )
        except BackendError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(reason(exc)) from exc

    # -- lifecycle ------------------------------------------------------------------------------

    async def ensure_network(self) -> None:
        """The user-defined network sandboxes join (container addresses work only on one)."""
        await self._call(self._ensure_network)

    async def create(self, spec: SandboxSpec) -> Endpoint:
        return await self._start(spec)

    async def resume(self, spec: SandboxSpec) -> Endpoint:
        """Start the same container again (a new one only if it vanished or its settings
        changed), with the fresh proxy token written into it first."""
        return await self._start(spec)

    async def pause(self, sandbox_id: str) -> None:
        self._stopping.add(sandbox_id)
        await self._call(self._stop, sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        self._stopping.add(sandbox_id)
        await self._call(self._remove, sandbox_id)

    async def destroy_workspace(self, workspace_id: str) -> None:
        await self._call(self._remove_volume, workspace_volume(workspace_id))

    async def list_managed(self) -> list[Managed]:
        return await self._call(self._list_managed)

    async def logs(self, sandbox_id: str, lines: int = 200) -> str:
        return await self._call(self._logs, sandbox_id, lines)

    async def aclose(self) -> None:
        """Stop watching events. Containers keep running: a server restart never stops them."""
        if self._watch_scope is not None:
            self._watch_scope.cancel()
        await trio.lowlevel.checkpoint()

    async def _start(self, spec: SandboxSpec) -> Endpoint:
        config = container_config(spec, self._settings)
        # While we (re)make and start the container, its `die` events are ours (a stale
        # container replaced, a late event from the previous stop); a crash during start is
        # caught by the readiness check instead.
        self._stopping.add(spec.id)
        host, started_at = await self._call(self._ensure_running, spec, config)
        self._stopping.discard(spec.id)
        endpoint = Endpoint(host=host, port=agent_port(spec.type))
        try:
            await self._wait_ready(spec, endpoint, started_at)
        except BackendError:
            # Don't leave a broken agent running; its volumes stay for a later resume.
            self._stopping.add(spec.id)
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT + 5):
                await self._stop_quietly(spec.id)
            raise
        if spec.git_url is not None:  # no Docker call at all for the usual start
            await self._call(self._start_clone, spec)
        return endpoint

    def _start_clone(self, spec: SandboxSpec) -> None:
        """The repository given at creation, cloned inside the container (its network, its
        user) onto the workspace disk, in the background; its lines go to the container log."""
        env = clone_environment(spec.git_url, spec.git_ref)
        container = self._container(spec.id)
        if env and container is not None:
            env["AGENTSERVER_DISK"] = DISK
            container.exec_run(["/bin/sh", "-c", CLONE_IN_CONTAINER], environment=env, detach=True)

    async def _stop_quietly(self, sandbox_id: str) -> None:
        try:
            await self._call(self._stop, sandbox_id)
        except BackendError as exc:
            log.warning("could not stop sandbox %s after a failed start: %s", sandbox_id, exc)
            await trio.lowlevel.checkpoint()

    async def _wait_ready(self, spec: SandboxSpec, endpoint: Endpoint, since: float) -> None:
        """Send the agent its readiness probe (kinds.py: with its credentials, within a bounded
        wait) as it starts and whenever it prints, until it answers; fail at once if it exits
        (its output, followed from `since`, ends)."""
        base_url = f"http://{endpoint.host}:{endpoint.port}"
        with trio.move_on_after(READY_TIMEOUT):
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as http:
                probe = partial(answers, http, spec.type, base_url, spec.agent_secret)
                if await self._answers_before_exit(spec.id, since, probe):
                    return
                state = await self._call(self._state, spec.id)
                if state is not None and state.get("Running"):
                    # Its log stream broke (the daemon restarted?), not the agent: probe on
                    # the backoff alone.
                    keep_open, quiet = trio.open_memory_channel[object](0)
                    with keep_open:
                        if await until_answers(probe, quiet):
                            return
                tail = (await self.logs(spec.id, 5)).strip().splitlines()
                detail = f"; last output: {tail[-1][:300]}" if tail else ""
                raise BackendError(f"the agent {exit_reason(state or {})} during start{detail}")
        raise BackendError(
            f"the agent did not answer at {endpoint.host}:{endpoint.port} "
            f"within {READY_TIMEOUT:.0f}s"
        )

    async def _answers_before_exit(
        self, sandbox_id: str, since: float, probe: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Whether the agent answers before its output ends (it stopped)."""
        send, output = trio.open_memory_channel[object](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_output, sandbox_id, since, send)
            answered = await until_answers(probe, output)
            nursery.cancel_scope.cancel()
        return answered

    async def _follow_output(
        self, sandbox_id: str, since: float, send: trio.MemorySendChannel[object]
    ) -> None:
        """What the container prints from `since` on, chunk by chunk, until it stops."""
        with send:
            try:
                stream = await self._call(self._open_output, sandbox_id, since)
            except BackendError as exc:
                log.warning("cannot follow the output of sandbox %s: %s", sandbox_id, exc)
                await trio.lowlevel.checkpoint()
                return
            if stream is None:
                return
            try:
                while True:
                    chunk = await trio.to_thread.run_sync(
                        _next_event, stream, abandon_on_cancel=True
                    )
                    if chunk is None:
                        return
                    await send.send(chunk)
            finally:
                stream.close()  # wakes the thread still reading, if it was abandoned

    # -- events ---------------------------------------------------------------------------------

    async def watch_exits(
        self, on_exit: ExitNotice, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Report our containers that stop on their own (`die` events we did not cause)."""
        with trio.CancelScope() as scope:
            self._watch_scope = scope
            # From now on only; after a break, from the last event seen (nanoseconds).
            since, delay = time.time_ns(), EVENTS_RETRY[0]
            events = await self._call(self._open_events, None)
            task_status.started()
            while True:
                try:
                    since = await self._follow(events, on_exit, since)
                    delay = EVENTS_RETRY[0]
                except BackendError as exc:
                    log.warning("Docker event stream broke (%s); reconnecting", exc)
                # Backoff between reconnects to a daemon that went away, not a wait for a state.
                await trio.sleep(delay)
                delay = min(delay * 2, EVENTS_RETRY[1])
                try:
                    events = await self._call(self._open_events, since)
                except BackendError as exc:
                    log.warning("Docker events unavailable: %s", exc)

    async def _follow(self, events: Any, on_exit: ExitNotice, since: int) -> int:
        """Handle events until the stream ends; returns where a new stream should start."""
        try:
            while True:
                event = await trio.to_thread.run_sync(_next_event, events, abandon_on_cancel=True)
                if event is None:
                    return since
                since = max(since, int(event.get("timeNano", since)) + 1)
                await self._on_die(event, on_exit)
        finally:
            events.close()

    async def _on_die(self, event: dict[str, Any], on_exit: ExitNotice) -> None:
        await trio.lowlevel.checkpoint()
        sandbox_id = event.get("Actor", {}).get("Attributes", {}).get(LABEL_SANDBOX)
        if not sandbox_id or sandbox_id in self._stopping:
            return
        try:
            state = await self._call(self._state, sandbox_id)
        except BackendError as exc:
            log.warning("cannot inspect sandbox %s after it stopped: %s", sandbox_id, exc)
            return
        if state is not None and state.get("Running"):
            return  # a late event from before the latest start
        code = event["Actor"]["Attributes"].get("exitCode", "?")
        text = exit_reason(state) if state else f"exited with status {code}; container removed"
        try:
            await on_exit(sandbox_id, text)
        except Exception:
            log.exception("exit notice for sandbox %s failed", sandbox_id)

    # -- blocking Docker calls (worker threads only) ----------------------------------------------

    def _ensure_network(self) -> None:
        name = self._settings.docker_network
        if _missing(lambda: self._client.networks.get(name)) is None:
            try:
                self._client.networks.create(
                    name, driver="bridge", labels={LABEL_MANAGED: MANAGED_BY}
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # made meanwhile by another server
                    raise

    def _ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        # One call: Docker answers a create of an existing local volume with that volume.
        self._client.volumes.create(name=name, labels=labels)

    def _container(self, sandbox_id: str) -> Container | None:
        return _missing(lambda: self._client.containers.get(container_name(sandbox_id)))

    def _ensure_running(self, spec: SandboxSpec, config: dict[str, Any]) -> tuple[str, float]:
        """Start the sandbox's container (made from `config` if missing or stale); its address
        and when it started (the daemon's clock, as its log timestamps)."""
        labels = config["labels"]
        self._ensure_volume(home_volume(spec.id), labels)
        self._ensure_volume(
            workspace_volume(spec.workspace_id),
            {LABEL_MANAGED: MANAGED_BY, LABEL_WORKSPACE: spec.workspace_id},
        )
        container = self._container(spec.id)
        wanted = {f"{k}={v}" for k, v in config["environment"].items()}
        if container is not None and not wanted <= set(container.attrs["Config"]["Env"] or []):
            # Its fixed settings changed (not the proxy token, which is a file): a container's
            # env cannot change, so make a new one. Files in the volumes stay.
            container.remove(force=True)
            container = None
        fresh = container is None
        if container is None:
            container = self._client.containers.create(**config)
        try:
            # This start's proxy token, read by the agent as it starts; a kept container keeps
            # whatever was installed outside the volumes.
            container.put_archive("/", start_archive(spec))
            if container.status == "running":  # e.g. a start redone after a server restart
                container.restart(timeout=STOP_TIMEOUT)
            else:
                container.start()
        except docker.errors.APIError:
            if fresh:
                container.remove(force=True)
            raise
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"] or {}
        address = (networks.get(self._settings.docker_network) or {}).get("IPAddress")
        if not address:
            raise BackendError(
                f"container {container.name} has no address on Docker network "
                f"{self._settings.docker_network}"
            )
        return str(address), docker_time(container.attrs["State"]["StartedAt"])

    def _stop(self, sandbox_id: str) -> None:
        container = self._container(sandbox_id)
        if container is not None and container.status in ("running", "restarting", "paused"):
            container.stop(timeout=STOP_TIMEOUT)

    def _remove(self, sandbox_id: str) -> None:
        container = self._container(sandbox_id)
        if container is not None:
            _missing(lambda: container.remove(force=True))
        self._remove_volume(home_volume(sandbox_id))

    def _remove_volume(self, name: str) -> None:
        volume = _missing(lambda: self._client.volumes.get(name))
        if volume is not None:
            _missing(lambda: volume.remove(force=True))

    def _state(self, sandbox_id: str) -> dict[str, Any] | None:
        container = self._container(sandbox_id)
        return None if container is None else dict(container.attrs["State"])

    def _listening_ports(self, sandbox_id: str) -> list[int] | None:
        container = self._container(sandbox_id)
        if container is None or container.status != "running":
            return None
        agent = agent_port(container.labels.get(LABEL_TYPE, "opencode"))
        # tcp6 may be missing (IPv6 off): cat then fails but still prints tcp.
        _, output = container.exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6"])
        text = output.decode(errors="replace") if isinstance(output, bytes) else ""
        # The container's address does not reach what listens on its loopback only.
        return listening_ports([text], exclude={agent}, loopback=False)

    def _list_managed(self) -> list[Managed]:
        found = []
        for container in self._client.containers.list(all=True, filters={"label": OURS}):
            labels = container.labels
            if LABEL_SANDBOX not in labels:
                continue
            running = container.status == "running"
            networks = container.attrs["NetworkSettings"]["Networks"] or {}
            address = (networks.get(self._settings.docker_network) or {}).get("IPAddress")
            endpoint = None
            if running and address:
                endpoint = Endpoint(str(address), agent_port(labels.get(LABEL_TYPE, "opencode")))
            found.append(Managed(id=labels[LABEL_SANDBOX], running=running, endpoint=endpoint))
        return found

    def _logs(self, sandbox_id: str, lines: int) -> str:
        container = self._container(sandbox_id)
        if container is None:
            return ""
        output = _missing(lambda: container.logs(stdout=True, stderr=True, tail=lines))
        return (output or b"").decode(errors="replace")

    def _open_output(self, sandbox_id: str, since: float) -> Any:
        """The container's output from `since` (seconds) on, followed: a stream of chunks that
        ends when it stops; None if it is gone. By name: the client's own inspect (for the TTY
        setting) is the only one."""
        name = container_name(sandbox_id)
        return _missing(lambda: self._client.api.logs(name, stream=True, follow=True, since=since))

    def _open_events(self, since_ns: int | None) -> Any:
        filters = {"type": "container", "event": "die", "label": OURS}
        # Docker takes "seconds.nanoseconds"; whole seconds would replay up to a second of events.
        since = None if since_ns is None else f"{since_ns // 10**9}.{since_ns % 10**9:09d}"
        return self._client.api.events(since=since, filters=filters, decode=True)  # type: ignore[call-overload]

    def close(self) -> None:
        self._client.close()


def _next_event(events: Iterator[T]) -> T | None:
    """The next event (or output chunk), or None when the stream ended (daemon gone or stream
    closed)."""
    try:
        return next(events, None)
    except (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        OSError,
        ValueError,
    ) as exc:
        log.debug("Docker event stream ended: %s", exc)
        return None


@asynccontextmanager
async def open_backend(settings: Settings, on_exit: ExitNotice) -> AsyncIterator[DockerBackend]:
    """Connect to Docker, ensure the network, and watch for sandboxes that stop on their own."""
    client = await trio.to_thread.run_sync(connect)
    backend = DockerBackend(client, settings)
    try:
        await backend.ensure_network()
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, "Docker exit watcher", backend.watch_exits, on_exit)
            try:
                yield backend
            finally:
                nursery.cancel_scope.cancel()
    finally:
        backend.close()  # closes idle HTTP connections: no I/O to wait for
