"""The process backend's running agents: each one supervised in the backend's nursery.

A supervisor copies its agent's output to a ring and the sandbox's output file, notices when
it says it listens, and when it exits kills what is left of it (its process group, its
cgroup) and tells the lifecycle unless we stopped it ourselves. Agents die with the server
(a parent-death signal, child.py); the pid file lets the next start stop survivors
(proctree.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress

import trio

from agentserver.errors import AgentServerError
from agentserver.sandboxes.base import ExitNotice
from agentserver.sandboxes.cgroups import Cgroup
from agentserver.sandboxes.child import Child
from agentserver.sandboxes.launch import Folders
from agentserver.sandboxes.proctree import descendants, forget, open_pidfds, wait_gone

log = logging.getLogger(__name__)
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL after this long
LOG_LINES = 2000  # lines of output kept in memory per sandbox
REPORT_RETRY_FIRST, REPORT_RETRY_MAX = 0.5, 30.0  # retrying an exit notice that failed


class Agent:
    """One running sandbox process and what we know about it."""

    def __init__(
        self,
        sandbox_id: str,
        kind: str,
        process: Child,
        port: int,
        cgroup: Cgroup,
        host: str = "127.0.0.1",
    ) -> None:
        self.sandbox_id = sandbox_id
        self.cgroup = cgroup  # removed once the agent exited
        self.kind = kind
        self.process = process
        self.host = host  # its address: the sandbox's own, or loopback without a namespace
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


class Runner:
    """The agents running now, by sandbox id; each supervised in the nursery given."""

    def __init__(
        self,
        nursery: trio.Nursery,
        on_exit: ExitNotice,
        folders: Folders,
        on_gone: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._nursery = nursery
        self._on_exit = on_exit
        self._folders = folders
        # What else goes with an agent once it has exited (the sandbox's network).
        self._on_gone = on_gone
        self._agents: dict[str, Agent] = {}

    def get(self, sandbox_id: str) -> Agent | None:
        return self._agents.get(sandbox_id)

    def __iter__(self) -> Iterator[Agent]:
        return iter(list(self._agents.values()))

    async def adopt(
        self,
        sandbox_id: str,
        kind: str,
        process: Child,
        port: int,
        cgroup: Cgroup,
        host: str = "127.0.0.1",
    ) -> Agent:
        """Supervise a process just started for the sandbox; it is the sandbox's agent now."""
        agent = Agent(sandbox_id, kind, process, port, cgroup, host)
        self._agents[sandbox_id] = agent
        await self._nursery.start(self._supervise, agent)
        return agent

    async def _supervise(
        self, agent: Agent, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the process: copy its output to the ring and the log file, report its exit."""
        task_status.started()
        log_path = self._folders.output_log(agent.sandbox_id)
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
                if self._on_gone is not None:
                    await self._on_gone(agent.sandbox_id)
            with suppress(OSError):
                forget(self._folders.sandbox_dir(agent.sandbox_id))
            agent.exited.set()
            agent.settled.set()
            self._forget(agent)
        if not agent.stopping:
            reason = agent.exit_reason()
            log.warning("sandbox %s: %s", agent.sandbox_id, reason)
            if agent.listening:  # before that, the start reports the failure itself
                await self._report_exit(agent, reason)

    def _forget(self, agent: Agent) -> None:
        if self._agents.get(agent.sandbox_id) is agent:
            del self._agents[agent.sandbox_id]

    async def _report_exit(self, agent: Agent, reason: str) -> None:
        """Tell the lifecycle the agent stopped on its own, retrying while that fails (the
        database may be down): a supervisor never takes the server down. It gives up once
        another agent of the sandbox runs (that start decides its status)."""
        delay = REPORT_RETRY_FIRST
        while True:
            try:
                await self._on_exit(agent.sandbox_id, reason)
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

    async def stop(self, agent: Agent) -> None:
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
        self._forget(agent)
        # Last, once it is forgotten: it may have exited already (or within the grace wait).
        await trio.lowlevel.checkpoint()

    async def stop_all(self) -> None:
        """Stop every agent at once (server shutdown): none outlives the server."""
        async with trio.open_nursery() as nursery:
            for agent in self:
                nursery.start_soon(self.stop, agent)


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now (the agent binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(agent: Agent) -> bool:
    """Did the agent fail to bind its port? (opencode 1.x says only "ServeError" then.)"""
    text = agent.tail(20).lower()
    return not agent.listening and any(
        sign in text for sign in ("address already in use", "eaddrinuse", "serveerror")
    )


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
