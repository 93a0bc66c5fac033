"""The Backend protocol every sandbox runtime implements (process, docker, kubernetes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from agentserver.models import SandboxType

if TYPE_CHECKING:
    from agentserver.settings import Settings


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything a backend needs to start one sandbox. Secrets here never reach the API."""

    id: str
    workspace_id: str
    type: SandboxType
    # The agent's own password (opencode Basic auth) or gateway token (OpenClaw).
    agent_secret: str
    # Where the sandbox reaches the LLM proxy, and the per-sandbox token it uses there.
    llm_base_url: str
    proxy_token: str
    # The variables its creator gave (sandboxes/setup.py): secrets of theirs, never logged.
    env: dict[str, str] = field(default_factory=dict, repr=False)
    # A repository to clone onto the workspace disk on its first start (sandboxes/setup.py).
    git_url: str | None = None
    git_ref: str | None = None
    # Seconds without activity before the idle watcher pauses it (its workspace's timeout, or
    # the server's); 0: never. A backend may stop it by itself a little later (kubernetes).
    idle_timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the proxy reaches a running sandbox's agent."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Managed:
    """A sandbox the backend is running or keeping (for reconciliation at start)."""

    id: str
    running: bool
    endpoint: Endpoint | None = None


class Backend(Protocol):
    """A runtime for sandboxes. Every method is idempotent; failures raise BackendError."""

    name: str
    # What signed-in users should be told about this backend (e.g. sandboxes run unisolated).
    warnings: tuple[str, ...]

    async def create(self, spec: SandboxSpec) -> Endpoint:
        """Start a new sandbox and return once its agent answers its health check."""
        ...

    async def pause(self, sandbox_id: str) -> None:
        """Stop the sandbox, keeping its files."""
        ...

    async def resume(self, spec: SandboxSpec) -> Endpoint:
        """Start a paused sandbox again (its address may change)."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the sandbox and remove its files; a missing sandbox is not an error."""
        ...

    async def destroy_workspace(self, workspace_id: str) -> None:
        """Remove the workspace's shared disk (after its sandboxes are destroyed)."""
        ...

    async def list_managed(self) -> list[Managed]:
        """Every sandbox this backend holds, for reconciliation with the database."""
        ...

    async def logs(self, sandbox_id: str, lines: int = 200) -> str:
        """The tail of the agent's output."""
        ...

    async def aclose(self) -> None:
        """Stop everything this backend runs in this process (server shutdown)."""
        ...

    def describe(self) -> str:
        """One line for the operator at start-up: what runs sandboxes, and how isolated."""
        ...

    def disk_path(self, workspace_id: str) -> str:
        """Where the workspace's shared disk is inside its sandboxes (the agents' working
        directory): /data/disk0, or its real path where sandboxes have no mounts of their own."""
        ...

    def preview_endpoint(self, sandbox_id: str, agent: Endpoint, port: int) -> Endpoint | None:
        """Where port `port` inside a running sandbox is reached (its agent is at `agent`), or
        None where this backend cannot reach a sandbox's own ports (previews are refused)."""
        ...

    async def listening_ports(self, sandbox_id: str) -> list[int] | None:
        """The TCP ports something listens on inside a running sandbox (the previews list),
        or None where this backend cannot tell."""
        ...


@runtime_checkable
class KeepsAlive(Protocol):
    """A backend that stops idle sandboxes by itself (so they stop even with no server up)
    and is told of their activity to put that off."""

    async def keep_alive(self, sandbox_id: str) -> None:
        """The sandbox was used just now (called at most every 30 s per sandbox)."""
        ...


# Called by a backend when a sandbox stops on its own (crash, exit): (sandbox id, reason).
# The lifecycle marks it `failed` with that reason.
ExitNotice = Callable[[str, str], Awaitable[None]]

# Every backend module offers `open_backend(settings, on_exit) -> AsyncContextManager[Backend]`;
# the context owns the backend's tasks (e.g. one supervisor per process) and stops them on exit.
BackendOpener = Callable[["Settings", ExitNotice], AbstractAsyncContextManager[Backend]]
