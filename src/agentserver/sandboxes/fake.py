"""An in-memory Backend for tests and benchmarks: controllable delays, gates, injected failures.

It runs nothing. Each operation records its call, waits at the operation's gate if one is
set (the test releases it), sleeps the operation's delay (trio time, so under a
`MockClock(autojump_threshold=0)` it costs no wall time), then raises an injected failure if
one is queued, and only then changes the sandbox it keeps. It ships with the package (not
tests/support) so benchmarks can drive the lifecycle service without starting agents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import trio

from agentserver.errors import BackendError
from agentserver.sandboxes.base import BackendOpener, Endpoint, ExitNotice, Managed, SandboxSpec
from agentserver.sandboxes.isolation import DISK_PATH

if TYPE_CHECKING:
    from agentserver.settings import Settings

Op = Literal[
    "create", "pause", "resume", "destroy", "destroy_workspace", "list_managed", "logs", "aclose"
]
OPS: tuple[Op, ...] = (
    "create",
    "pause",
    "resume",
    "destroy",
    "destroy_workspace",
    "list_managed",
    "logs",
    "aclose",
)
FIRST_PORT = 20_000
# Where a preview of a port nothing "listens" on goes: port 1 on loopback refuses connections.
NOWHERE = Endpoint("127.0.0.1", 1)


@dataclass(frozen=True, slots=True)
class Call:
    """One call the backend received: the operation and the sandbox (or workspace) id."""

    op: Op
    target: str


@dataclass(slots=True)
class Held:
    """A sandbox the fake backend keeps: its spec, whether it runs, and where."""

    spec: SandboxSpec
    running: bool
    endpoint: Endpoint | None


class Gate:
    """Holds operations at their start until `release`; `waiting` counts those held now."""

    def __init__(self) -> None:
        self.waiting = 0
        self._arrived = trio.Event()
        self._released = trio.Event()

    def release(self) -> None:
        """Let every held call (and every later one) through."""
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    async def arrived(self) -> None:
        """Return once a call is held here (or has passed through)."""
        await self._arrived.wait()

    async def pass_through(self) -> None:
        self.waiting += 1
        self._arrived.set()
        try:
            await self._released.wait()
        finally:
            self.waiting -= 1


@dataclass
class FakeBackend:
    """A Backend in memory (see the module docstring). `on_exit` hears `crash`."""

    on_exit: ExitNotice | None = None
    name: str = "fake"
    warnings: tuple[str, ...] = ()
    delays: dict[Op, float] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    held: dict[str, Held] = field(default_factory=dict)
    workspaces_removed: list[str] = field(default_factory=list)
    closed: bool = False
    # Previews: the ports "listening" in each sandbox and where each is really served (a test's
    # own server); `previews` False stands for a backend that cannot reach sandboxes' ports.
    listening: dict[str, dict[int, Endpoint]] = field(default_factory=dict)
    previews: bool = True
    # True: stands for the process backend, whose sandboxes are one replica's children.
    per_replica: bool = False
    _failures: dict[Op, list[BaseException]] = field(default_factory=dict)
    _gates: dict[Op, Gate] = field(default_factory=dict)
    _next_port: int = FIRST_PORT

    # -- control (the test's side) ------------------------------------------------------------
    def delay(self, op: Op, seconds: float) -> None:
        """Every later `op` takes `seconds` (of trio time) before it acts."""
        self.delays[op] = seconds

    def fail_next(self, op: Op, exc: BaseException | None = None) -> None:
        """The next `op` raises `exc` (a BackendError by default) instead of acting."""
        self._failures.setdefault(op, []).append(exc or BackendError(f"{op} failed (injected)"))

    def gate(self, op: Op) -> Gate:
        """Hold every `op` at its start from now until the returned gate is released."""
        gate = self._gates[op] = Gate()
        return gate

    def ops(self, op: Op) -> list[str]:
        """The ids every `op` call was made for, in order."""
        return [c.target for c in self.calls if c.op == op]

    def running(self, sandbox_id: str) -> bool:
        held = self.held.get(sandbox_id)
        return held is not None and held.running

    async def crash(self, sandbox_id: str, reason: str = "the agent exited") -> None:
        """The agent stops on its own: stopped here, and `on_exit` is told (as a real backend's
        supervisor would)."""
        held = self.held.get(sandbox_id)
        if held is not None:
            held.running, held.endpoint = False, None
        if self.on_exit is not None:
            await self.on_exit(sandbox_id, reason)
        else:
            await trio.lowlevel.checkpoint()

    def listen(self, sandbox_id: str, port: int, served_at: Endpoint) -> None:
        """Something in the sandbox listens on `port` now: its previews go to `served_at`."""
        self.listening.setdefault(sandbox_id, {})[port] = served_at

    def stop_listening(self, sandbox_id: str, port: int) -> None:
        self.listening.get(sandbox_id, {}).pop(port, None)

    def forget(self, sandbox_id: str) -> None:
        """Lose a sandbox without telling anyone (what a server restart can leave behind)."""
        self.held.pop(sandbox_id, None)

    # -- the Backend protocol -----------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> Endpoint:
        await self._enter("create", spec.id)
        return self._start(spec)

    async def pause(self, sandbox_id: str) -> None:
        await self._enter("pause", sandbox_id)
        held = self.held.get(sandbox_id)
        if held is not None:
            held.running, held.endpoint = False, None

    async def resume(self, spec: SandboxSpec) -> Endpoint:
        await self._enter("resume", spec.id)
        return self._start(spec)

    async def destroy(self, sandbox_id: str) -> None:
        await self._enter("destroy", sandbox_id)
        self.held.pop(sandbox_id, None)

    async def destroy_workspace(self, workspace_id: str) -> None:
        await self._enter("destroy_workspace", workspace_id)
        self.workspaces_removed.append(workspace_id)

    async def list_managed(self) -> list[Managed]:
        await self._enter("list_managed", "")
        return [Managed(sid, h.running, h.endpoint) for sid, h in self.held.items()]

    async def logs(self, sandbox_id: str, lines: int = 200) -> str:
        await self._enter("logs", sandbox_id)
        return "\n".join(f"{sandbox_id}: {c.op}" for c in self.calls if c.target == sandbox_id)

    async def aclose(self) -> None:
        await self._enter("aclose", "")
        for held in self.held.values():
            held.running, held.endpoint = False, None
        self.closed = True

    def describe(self) -> str:
        return "fake backend: in memory, nothing runs"

    def disk_path(self, workspace_id: str) -> str:
        return DISK_PATH

    def preview_endpoint(self, sandbox_id: str, agent: Endpoint, port: int) -> Endpoint | None:
        if not self.previews:
            return None
        return self.listening.get(sandbox_id, {}).get(port, NOWHERE)

    async def listening_ports(self, sandbox_id: str) -> list[int] | None:
        await trio.lowlevel.checkpoint()
        return sorted(self.listening.get(sandbox_id, {})) if self.previews else None

    # -- inside -------------------------------------------------------------------------------
    async def _enter(self, op: Op, target: str) -> None:
        """Record the call, hold at the gate, take the delay, raise an injected failure."""
        self.calls.append(Call(op, target))
        gate = self._gates.get(op)
        if gate is not None and not gate.released:
            await gate.pass_through()
        await trio.sleep(self.delays.get(op, 0.0))
        queued = self._failures.get(op)
        if queued:
            raise queued.pop(0)

    def _start(self, spec: SandboxSpec) -> Endpoint:
        endpoint = Endpoint("127.0.0.1", self._next_port)
        self._next_port += 1  # a resumed sandbox may come back at another address
        self.held[spec.id] = Held(spec, True, endpoint)
        return endpoint


@asynccontextmanager
async def open_backend(settings: Settings, on_exit: ExitNotice) -> AsyncIterator[FakeBackend]:
    """The `BackendOpener` shape (sandboxes/base.py), for code that opens backends by it."""
    del settings  # nothing to configure
    backend = FakeBackend(on_exit=on_exit)
    try:
        yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()


# Checked by mypy: the fake keeps to the Backend protocol as the real backends do.
OPENER: BackendOpener = open_backend
