"""The process backend: each sandbox is its agent (opencode or OpenClaw) as a child process,
isolated with bubblewrap.

Its files are laid out by launch.py; its running agents are supervised by runner.py. A root
server runs each sandbox as a uid of its own, in a group per workspace disk (ids.py): its home
is 0700 and the disk 2770, so no sandbox can read another's home or another workspace's disk
even outside its mounts. Without working bubblewrap sandboxes start only when the operator
allows it (--allow-unisolated-sandboxes). Agents die with the server (a parent-death signal)
and a pid file lets the next start stop any that survived (proctree.py).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from agentserver.errors import BackendError
from agentserver.sandboxes.account import Account, data_dir_problem, resolve_account
from agentserver.sandboxes.base import Endpoint, ExitNotice, Managed, SandboxSpec
from agentserver.sandboxes.cgroups import Layout, probe
from agentserver.sandboxes.child import Child
from agentserver.sandboxes.ids import Ids
from agentserver.sandboxes.isolation import (
    DISK_PATH,
    Isolation,
    isolation_verdict,
    probe_isolation,
)
from agentserver.sandboxes.launch import LOG_FILE_LIMIT, Folders, agent_command, prepare_dirs
from agentserver.sandboxes.limits import limits_for, wanted_of
from agentserver.sandboxes.proctree import record, stop_leftovers
from agentserver.sandboxes.readiness import answers
from agentserver.sandboxes.runner import (
    STOP_GRACE,
    Agent,
    Runner,
    free_port,
    port_taken,
    remove_cgroup,
)
from agentserver.settings import Settings

log = logging.getLogger(__name__)
PROBE_EVERY = 0.05  # between health probes, once the agent said it listens
PORT_ATTEMPTS = 3  # free ports tried when another program takes the one offered


class ProcessBackend:
    """Runs sandboxes as local processes; every process is supervised in this backend's nursery."""

    name = "process"

    def describe(self) -> str:
        if self.refusal:
            return f"process backend; {self.refusal}"
        limits = f"limits: {self.cgroups.describe()}"
        if not self.isolation.enabled:
            return f"process backend WITHOUT isolation (--allow-unisolated-sandboxes), {limits}"
        who = ", each as a uid of its own" if self.account.switches else ""
        return f"process backend, each sandbox in bubblewrap{who}, {limits}"

    def disk_path(self, workspace_id: str) -> str:
        """Bound at /data/disk0 inside bubblewrap; without it (no mount namespace) the agent
        works in the disk's real folder, so the path it shows is the one reported here."""
        if self.isolation.enabled:
            return DISK_PATH
        return str(self.disk(workspace_id))

    def preview_endpoint(self, sandbox_id: str, agent: Endpoint, port: int) -> Endpoint | None:
        return None  # previews: not yet on this backend

    async def listening_ports(self, sandbox_id: str) -> list[int] | None:
        await trio.lowlevel.checkpoint()
        return None

    def __init__(
        self,
        settings: Settings,
        on_exit: ExitNotice,
        nursery: trio.Nursery,
        isolation: Isolation,
        account: Account,
        ids: Ids | None = None,
        cgroups: Layout | None = None,
    ) -> None:
        self.settings = settings
        self.isolation = isolation
        self.account = account
        self.ids = ids  # a root server's uid per sandbox and gid per workspace (ids.py)
        # Where each sandbox's memory, CPU and process limits go (cgroups.py; none: no cgroups).
        self.cgroups = cgroups or Layout(wanted_of(settings), {}, {})
        self.folders = Folders(settings.data_dir)
        self._root = settings.data_dir
        self._agents = Runner(nursery, on_exit, self.folders)
        # Readiness probes keep no connection: an agent's port changes on every start, and a
        # kept one would stay open to an agent long gone.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0),
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self.refusal, self.warnings = isolation_verdict(settings, isolation)

    def account_of(self, sandbox_id: str, workspace_id: str) -> Account:
        """Who the sandbox's processes run as: its own uid and its workspace's group (root
        server), or the one account (a server that is not root runs them as itself)."""
        if self.ids is None:
            return self.account
        uid, gid = self.ids.uid(sandbox_id), self.ids.gid(workspace_id)
        return Account(f"uid {uid}", uid, gid)

    # -- paths --------------------------------------------------------------------------------
    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.folders.sandbox_dir(sandbox_id)

    def home(self, sandbox_id: str) -> Path:
        return self.folders.home(sandbox_id)

    def disk(self, workspace_id: str) -> Path:
        return self.folders.disk(workspace_id)

    # -- Backend protocol ---------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> Endpoint:
        return await self._start(spec)

    async def resume(self, spec: SandboxSpec) -> Endpoint:
        return await self._start(spec)

    async def pause(self, sandbox_id: str) -> None:
        agent = self._agents.get(sandbox_id)
        if agent is not None:
            await self._agents.stop(agent)
        else:
            await trio.lowlevel.checkpoint()

    async def destroy(self, sandbox_id: str) -> None:
        await self.pause(sandbox_id)
        await trio.to_thread.run_sync(
            lambda: shutil.rmtree(self.sandbox_dir(sandbox_id), ignore_errors=True)
        )

    async def destroy_workspace(self, workspace_id: str) -> None:
        await trio.to_thread.run_sync(
            lambda: shutil.rmtree(self.disk(workspace_id).parent, ignore_errors=True)
        )

    async def list_managed(self) -> list[Managed]:
        base = self._root / "sandboxes"
        on_disk = await trio.to_thread.run_sync(leftover_ids, base)
        found = {i: Managed(i, running=False) for i in on_disk}
        for agent in self._agents:
            found[agent.sandbox_id] = Managed(
                agent.sandbox_id,
                running=not agent.exited.is_set(),
                endpoint=Endpoint("127.0.0.1", agent.port),
            )
        return list(found.values())

    async def logs(self, sandbox_id: str, lines: int = 200) -> str:
        agent = self._agents.get(sandbox_id)
        if agent is not None:
            await trio.lowlevel.checkpoint()
            return "\n".join(list(agent.output)[-lines:])
        path = self.folders.output_log(sandbox_id)

        def read_tail() -> str:
            try:
                data = path.read_bytes()[-(LOG_FILE_LIMIT // 4) :]
            except FileNotFoundError:
                return ""
            return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

        return await trio.to_thread.run_sync(read_tail)

    async def aclose(self) -> None:
        """Stop every process (server shutdown): none outlives the server."""
        with trio.CancelScope(shield=True):
            await self._agents.stop_all()
            await self._client.aclose()

    # -- starting -----------------------------------------------------------------------------
    def command(self, spec: SandboxSpec, port: int) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the agent, before isolation wraps it."""
        return agent_command(
            self.settings,
            spec,
            port,
            folders=self.folders,
            isolated=self.isolation.enabled,
            account=self.account_of(spec.id, spec.workspace_id),
        )

    def _prepare_dirs(self, spec: SandboxSpec) -> None:
        account = self.account_of(spec.id, spec.workspace_id)
        prepare_dirs(
            spec,
            self.folders,
            account,
            isolated=self.isolation.enabled,
            own_ids=self.ids is not None,
        )

    async def _start(self, spec: SandboxSpec) -> Endpoint:
        """Start the agent (if it is not running) and return once it answers its health check."""
        if self.refusal:
            await trio.lowlevel.checkpoint()
            raise BackendError(self.refusal)
        agent = self._agents.get(spec.id)
        if agent is not None and not agent.exited.is_set() and agent.listening:
            await trio.lowlevel.checkpoint()
            return Endpoint("127.0.0.1", agent.port)
        if agent is not None:
            await self._agents.stop(agent)
        try:
            await trio.to_thread.run_sync(self._prepare_dirs, spec)
        except OSError as exc:
            raise BackendError(f"cannot prepare the sandbox's directories: {exc}") from exc
        for attempt in range(PORT_ATTEMPTS):
            agent = await self._spawn(spec)
            try:
                await self._ready(agent, spec)
            except BackendError:
                with trio.CancelScope(shield=True):
                    await self._agents.stop(agent)
                # Someone took the free port between our check and the agent's bind: retry.
                if attempt + 1 < PORT_ATTEMPTS and port_taken(agent):
                    continue
                raise
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._agents.stop(agent)
                raise
            return Endpoint("127.0.0.1", agent.port)
        raise AssertionError("unreachable")

    async def _spawn(self, spec: SandboxSpec) -> Agent:
        """Start the agent's process on a free port, supervised in the backend's nursery."""
        port = free_port()
        argv, env = self.command(spec, port)
        argv = self.isolation.wrap(
            argv, home=self.home(spec.id), disk=self.disk(spec.workspace_id), data_dir=self._root
        )
        cgroup = self.cgroups.cgroup(spec.id)
        try:
            await trio.to_thread.run_sync(cgroup.create)
        except OSError as exc:
            raise BackendError(f"cannot create the sandbox's cgroup: {exc}") from exc
        try:
            account = self.account_of(spec.id, spec.workspace_id)
            limits = limits_for(self.settings, own_uid=self.ids is not None, cgroups=cgroup.procs)
            # The agent works on the workspace's disk (bubblewrap moves it to /data/disk0).
            workdir = str(self.disk(spec.workspace_id))
            process = Child.spawn(argv, env, workdir, account, limits)
        except (OSError, subprocess.SubprocessError) as exc:
            with trio.CancelScope(shield=True):
                await remove_cgroup(cgroup, spec.id)
            reason = exc.strerror if isinstance(exc, OSError) else None
            raise BackendError(f"cannot start {argv[0]}: {reason or exc}") from exc
        # Recorded at once: should the server die now, the next start finds and stops it.
        try:
            record(self.sandbox_dir(spec.id), process.pid)
        except OSError as exc:
            log.warning("sandbox %s: cannot record its process id: %s", spec.id, exc)
        return await self._agents.adopt(spec.id, spec.type.value, process, port, cgroup)

    async def _ready(self, agent: Agent, spec: SandboxSpec) -> None:
        """Wait for the "listening" line, then for an authenticated answer over HTTP (the
        kind's readiness probe, kinds.py)."""
        await agent.settled.wait()
        base_url = f"http://127.0.0.1:{agent.port}"
        while not agent.exited.is_set():
            if await answers(self._client, spec.type, base_url, spec.agent_secret):
                return
            # Polling an external process's health (allowed): it has said it listens already.
            await trio.sleep(PROBE_EVERY)
        raise BackendError(agent.exit_reason() + " before it was ready")

    def pid(self, sandbox_id: str) -> int | None:
        """The process id of a running sandbox (for tests and diagnostics)."""
        agent = self._agents.get(sandbox_id)
        return None if agent is None else agent.process.pid


def leftover_ids(base: Path) -> list[str]:
    """The ids of the sandboxes with a folder under `base` (their cgroups are ours to sweep)."""
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


@asynccontextmanager
async def open_backend(settings: Settings, on_exit: ExitNotice) -> AsyncIterator[ProcessBackend]:
    """The process backend; leaving the context stops every sandbox process it started."""
    account = await trio.to_thread.run_sync(resolve_account, settings)
    # Not fatal here: the server is useful without sandboxes; each start reports it again.
    problem = await trio.to_thread.run_sync(data_dir_problem, account, settings.data_dir)
    if problem is not None:
        log.warning("sandboxes cannot start: %s", problem)
    isolation = await probe_isolation(settings, account)
    await stop_leftovers(settings.data_dir / "sandboxes", STOP_GRACE)
    cgroups = await trio.to_thread.run_sync(probe, wanted_of(settings))
    if cgroups.missing:
        log.warning(
            "process sandboxes get no %s limit: %s",
            ", ".join(cgroups.missing),
            "; ".join(f"{c}: {why}" for c, why in cgroups.missing.items()),
        )
    await trio.to_thread.run_sync(cgroups.sweep, leftover_ids(settings.data_dir / "sandboxes"))
    ids = await trio.to_thread.run_sync(Ids.scan, settings.data_dir) if account.switches else None
    async with trio.open_nursery() as nursery:
        backend = ProcessBackend(settings, on_exit, nursery, isolation, account, ids, cgroups)
        try:
            yield backend
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE + 5):
                await backend.aclose()
            nursery.cancel_scope.cancel()
