"""The process backend: each sandbox is its agent (opencode or OpenClaw) as a child process,
isolated with bubblewrap.

Its files are laid out by launch.py; its running agents are supervised by runner.py. A root
server runs each sandbox as a uid of its own, in a group per workspace disk (ids.py): its home
is 0700 and the disk 2770, so no sandbox can read another's home or another workspace's disk
even outside its mounts. Without working bubblewrap sandboxes start only when the operator
allows it (--allow-unisolated-sandboxes). Agents die with the server (a parent-death signal)
and a pid file lets the next start stop any that survived (proctree.py).

Where the host can make network namespaces (netns.py), each isolated sandbox runs in its own,
with an address of its own: its agent and previews are reached there, two sandboxes can listen
on the same port, and neither reaches the other or the server's loopback services; its agent
calls the LLM proxy through a relay (llm_relay.py). Elsewhere, or unisolated, sandboxes share
the server's network and previews are refused.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import trio

from agentserver.errors import BackendError
from agentserver.kinds import kind_of
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
from agentserver.sandboxes.listening import listening_ports
from agentserver.sandboxes.netns import Plumbing
from agentserver.sandboxes.netns import probe as probe_namespaces
from agentserver.sandboxes.networks import Networks, SandboxNet
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
    # Its sandboxes are this server process's children: with several replicas, their rows
    # record which replica runs them (sandboxes/children.py).
    per_replica = True

    def describe(self) -> str:
        if self.refusal:
            return f"process backend; {self.refusal}"
        limits = f"limits: {self.cgroups.describe()}"
        if not self.isolation.enabled:
            return (
                f"process backend WITHOUT isolation (--allow-unisolated-sandboxes), {limits};"
                f" {self.network_note}"
            )
        who = ", each as a uid of its own" if self.account.switches else ""
        return f"process backend, each sandbox in bubblewrap{who}, {limits}; {self.network_note}"

    def disk_path(self, workspace_id: str) -> str:
        """Bound at /data/disk0 inside bubblewrap; without it (no mount namespace) the agent
        works in the disk's real folder, so the path it shows is the one reported here."""
        if self.isolation.enabled:
            return DISK_PATH
        return str(self.disk(workspace_id))

    def preview_endpoint(self, sandbox_id: str, agent: Endpoint, port: int) -> Endpoint | None:
        """The sandbox's own address and `port`; None without namespaces (the port would be
        the server's), for a sandbox not running here, and for its agent's own port."""
        running = self._agents.get(sandbox_id)
        if self.networks is None or running is None or self.networks.get(sandbox_id) is None:
            return None
        if port == running.port or not self._in_subnet(running.host):
            return None
        return Endpoint(running.host, port)

    async def listening_ports(self, sandbox_id: str) -> list[int] | None:
        """What listens in the sandbox's namespace (its agent's table), its agent left out."""
        running = self._agents.get(sandbox_id)
        if self.networks is None or running is None or running.exited.is_set():
            await trio.lowlevel.checkpoint()
            return None
        pid, port = running.process.pid, running.port

        def read() -> list[str]:
            tables = []
            for name in ("tcp", "tcp6"):
                try:
                    tables.append(Path(f"/proc/{pid}/net/{name}").read_text())
                except OSError:
                    continue
            return tables

        return listening_ports(await trio.to_thread.run_sync(read), exclude={port})

    def _in_subnet(self, host: str) -> bool:
        return ipaddress.ip_address(host) in self.settings.sandbox_subnet

    def __init__(
        self,
        settings: Settings,
        on_exit: ExitNotice,
        nursery: trio.Nursery,
        isolation: Isolation,
        account: Account,
        ids: Ids | None = None,
        cgroups: Layout | None = None,
        plumbing: Plumbing | str | None = None,
    ) -> None:
        self.settings = settings
        self.isolation = isolation
        self.account = account
        self.ids = ids  # a root server's uid per sandbox and gid per workspace (ids.py)
        # Where each sandbox's memory, CPU and process limits go (cgroups.py; none: no cgroups).
        self.cgroups = cgroups or Layout(wanted_of(settings), {}, {})
        self.folders = Folders(settings.data_dir)
        self._root = settings.data_dir
        # Each sandbox's network namespace, where the host can make them (netns.py); the
        # string says why not (None: isolation is off, so there is no point).
        self.networks = (
            Networks(plumbing, nursery, settings.llm_proxy_url)
            if isinstance(plumbing, Plumbing)
            else None
        )
        self.network_note = network_note(plumbing)
        self._agents = Runner(nursery, on_exit, self.folders, self._network_gone)
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
                endpoint=Endpoint(agent.host, agent.port),
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
            if self.networks is not None:
                await self.networks.aclose()

    # -- starting -----------------------------------------------------------------------------
    def command(
        self, spec: SandboxSpec, port: int, *, own_network: bool = False
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the agent, before isolation wraps it."""
        return agent_command(
            self.settings,
            spec,
            port,
            folders=self.folders,
            isolated=self.isolation.enabled,
            account=self.account_of(spec.id, spec.workspace_id),
            own_network=own_network,
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
            return Endpoint(agent.host, agent.port)
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
            return Endpoint(agent.host, agent.port)
        raise AssertionError("unreachable")

    async def _spawn(self, spec: SandboxSpec) -> Agent:
        """Start the agent's process in the sandbox's own network (or on a free port of the
        server's), supervised in the backend's nursery."""
        if self.networks is None:
            return await self._spawn_in(spec, None)
        net = await self.networks.open(spec.id)
        try:
            spec = replace(spec, llm_base_url=self.networks.llm_base_url(net, spec.llm_base_url))
            return await self._spawn_in(spec, net)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.networks.release(spec.id)
            raise

    async def _network_gone(self, sandbox_id: str) -> None:
        """The agent has exited: its network goes too."""
        if self.networks is not None:
            await self.networks.release(sandbox_id)
        else:
            await trio.lowlevel.checkpoint()

    async def _spawn_in(self, spec: SandboxSpec, net: SandboxNet | None) -> Agent:
        # In a namespace of its own the agent's usual port is always free.
        port = kind_of(spec.type).port if net is not None else free_port()
        argv, env = self.command(spec, port, own_network=net is not None)
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
            netns = net.open_namespace() if net is not None else None
            try:
                process = Child.spawn(argv, env, workdir, account, limits, netns)
            finally:
                if netns is not None:
                    os.close(netns)
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
        host = net.address if net is not None else "127.0.0.1"
        return await self._agents.adopt(spec.id, spec.type.value, process, port, cgroup, host)

    async def _ready(self, agent: Agent, spec: SandboxSpec) -> None:
        """Wait for the "listening" line, then for an authenticated answer over HTTP (the
        kind's readiness probe, kinds.py)."""
        await agent.settled.wait()
        base_url = f"http://{agent.host}:{agent.port}"
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


def network_note(plumbing: Plumbing | str | None) -> str:
    """What the operator is told at start about sandboxes' networks."""
    if plumbing is None:
        return "sandboxes share the server's network (previews are refused)"
    if isinstance(plumbing, str):
        return (
            f"sandboxes share the server's network, previews are refused: no network"
            f" namespaces ({plumbing})"
        )
    egress = "" if plumbing.egress else ", no outbound network (net.ipv4.ip_forward is off)"
    return f"each sandbox on a network namespace of its own ({plumbing.network}){egress}"


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
    plumbing = await open_plumbing(settings, isolation)
    async with trio.open_nursery() as nursery:
        backend = ProcessBackend(
            settings, on_exit, nursery, isolation, account, ids, cgroups, plumbing
        )
        if not isinstance(plumbing, Plumbing):
            log.warning("%s", backend.network_note)
        try:
            yield backend
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE + 5):
                await backend.aclose()
            nursery.cancel_scope.cancel()


async def open_plumbing(settings: Settings, isolation: Isolation) -> Plumbing | str | None:
    """Namespaces for isolated sandboxes where the host can make them, with an earlier run's
    leftovers removed; else why not (None: isolation is off)."""
    if not isolation.enabled:
        await trio.lowlevel.checkpoint()
        return None
    plumbing = await trio.to_thread.run_sync(probe_namespaces, settings.sandbox_subnet)
    if isinstance(plumbing, Plumbing):
        ours = leftover_ids(settings.data_dir / "sandboxes")
        try:
            await trio.to_thread.run_sync(plumbing.sweep, ours)
        except BackendError as exc:
            log.warning("cannot remove a leftover sandbox network: %s", exc.message)
    return plumbing
