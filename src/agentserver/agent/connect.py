"""`agentserver agent connect`: register once, then keep one tunnel up and serve it.

The agent dials out (`ws(s)://<server>/api/tunnel/<sandboxId>`, token in the Authorization
header), and forwards every request the server opens on the tunnel to the local opencode
(forward.py). It reconnects forever with exponential backoff and full jitter (1 s up to 60 s,
reset after a healthy connection). A server that stops says so (the go-away "server restarting")
and the agent reconnects at once, with no wait: behind a load balancer another replica takes the
tunnel. Any other connection that was up and ended (the link broke) starts again from 1 s with
waits capped at a few seconds for a while, as do the attempts after that first immediate one (a
replica that is draining refuses new tunnels with 503), so an agent is back within seconds of a
server restart. It stops with exit status 1 when the server refuses the token (the sandbox was
deleted or its token revoked), or refuses the agent's tunnel protocol (426: the line names both
versions and the download). Every status line says
what happened in words (`describe`), never an exception's class name.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
import trio

from agentserver.agent import compat
from agentserver.agent.compat import IncompatibleServer, check_server
from agentserver.agent.forward import Forwarder
from agentserver.kinds import OPENCODE, PREVIEW_PORTS_HEADER, preview_refusal
from agentserver.tunnel import (
    SERVER_RESTARTING,
    ProtocolError,
    Role,
    Settings,
    Tunnel,
    TunnelClosed,
    masking,
    max_message_size,
    open_tunnel,
)
from agentserver.tunnel import version as tunnel_version
from agentserver.tunnel.dial import open_websocket
from agentserver.tunnel.handshake import HandshakeError, Refused
from agentserver.tunnel.websocket import ConnectionClosed, WebSocket

DEFAULT_CONFIG = "~/.agentserver/agent.json"
DEFAULT_OPENCODE_URL = f"http://localhost:{OPENCODE.port}"
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0
# After a connection that was up ends: waits capped at RESTART_CAP for RESTART_TRIES attempts
# (about a minute of a server restarting), then the usual doubling to BACKOFF_CAP.
RESTART_CAP, RESTART_TRIES = 3.0, 20
HEALTHY_AFTER = 30.0  # seconds connected after which the backoff starts again from 1 s
# At most one reconnect without a wait per this many seconds (a server that says it restarts
# over and over must not make the agent spin).
IMMEDIATE_EVERY = 1.0
PING_INTERVAL = 20.0
# What the agent accepts from the server: 256 KiB frames, 2 MiB of credit per stream (see the
# server's TUNNEL_SETTINGS). An older server that announces less gets frames of its size.
AGENT_SETTINGS = Settings(
    max_frame_payload=256 * 1024, initial_window=2 * 1024 * 1024, ping_interval=PING_INTERVAL
)
REVOKED_STATUSES = frozenset({401, 403, 404})
UPGRADE_REQUIRED = 426  # the server speaks another tunnel protocol (tunnel/version.py)
Say = Callable[[str], None]


class AgentError(Exception):
    """A reason to stop for good, with the message to show and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class AgentConfig:
    """The saved registration (`~/.agentserver/agent.json`, mode 0600)."""

    server: str
    sandboxId: str  # camelCase: the file's keys, as the original agent writes them
    tunnelToken: str
    workspaceId: str
    name: str
    # The ports of this machine the agent shares as previews (`--allow-port`); none before.
    allowedPorts: tuple[int, ...] = ()


_REQUIRED = ("server", "sandboxId", "tunnelToken", "workspaceId", "name")


def load_config(path: Path) -> AgentConfig | None:
    """The saved registration, or None when there is none yet."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read {path}: {exc}", status=2) from None
    if not isinstance(data, dict) or not data.get("sandboxId"):
        return None
    try:
        fields = {k: str(data[k]) for k in _REQUIRED}
    except KeyError as exc:
        raise AgentError(f"{path} lacks {exc}; register again with --code", status=2) from None
    ports = data.get("allowedPorts") or []
    if not isinstance(ports, list) or not all(type(p) is int for p in ports):
        raise AgentError(f"{path}: allowedPorts must be a list of port numbers", status=2)
    return AgentConfig(**fields, allowedPorts=tuple(ports))


def checked_ports(ports: Sequence[int], opencode_url: str) -> tuple[int, ...]:
    """`--allow-port` values, each a port a preview may reach (1024-65535, never an agent's
    own, nor the local opencode's), sorted without repeats."""
    opencode_port = httpx.URL(opencode_url).port
    for port in ports:
        why = preview_refusal(port, opencode_port)
        if why == "out_of_range":
            raise AgentError(f"--allow-port {port}: previews serve ports 1024-65535", status=2)
        if why is not None:
            raise AgentError(
                f"--allow-port {port}: that is an agent's own port, never a preview", status=2
            )
    return tuple(sorted(set(ports)))


def save_config(path: Path, config: AgentConfig) -> None:
    """Write atomically: a private directory (0700), the file created 0600, then renamed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".agent-", dir=path.parent)  # mkstemp creates 0600
    try:
        data = asdict(config)
        if not config.allowedPorts:  # the original agent's five keys, as before
            del data["allowedPorts"]
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def config_file(config_path: str | Path) -> Path:
    return Path(config_path).expanduser()


def default_name() -> str:
    return socket.gethostname() or "Local Agent"


def normalise_server(server: str) -> str:
    server = server.strip().rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise AgentError(f"--server must start with http:// or https:// (got {server!r})", status=2)
    return server


def tunnel_url(config: AgentConfig, server: str | None = None) -> str:
    base = normalise_server(server or config.server)
    return "ws" + base[len("http") :] + f"/api/tunnel/{config.sandboxId}"


async def register(server: str, code: str, name: str) -> AgentConfig:
    """Spend the one-time code for a sandbox and its tunnel token."""
    server = normalise_server(server)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                f"{server}/api/agent/register", json={"code": code.strip(), "name": name}
            )
    except httpx.HTTPError as exc:
        raise AgentError(f"registration failed: cannot reach {server}: {exc}") from None
    if response.status_code != 201:
        try:
            reason = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = response.text[:200]
        raise AgentError(f"registration failed ({response.status_code}): {reason}")
    body = response.json()
    return AgentConfig(
        server=server,
        sandboxId=body["sandboxId"],
        tunnelToken=body["tunnelToken"],
        workspaceId=body["workspaceId"],
        name=name,
    )


class Backoff:
    """Exponential backoff with full jitter: a random wait up to 1, 2, 4 … 60 s.

    `lost()` is for a connection that was up and ended: the next waits start again from the
    first and stay under `restart_cap` for `restart_tries` attempts (a server restarting
    refuses connections for a few seconds; an agent must not wait a minute for it)."""

    def __init__(
        self,
        first: float = BACKOFF_FIRST,
        cap: float = BACKOFF_CAP,
        rng: random.Random | None = None,
        *,
        restart_cap: float = RESTART_CAP,
        restart_tries: int = RESTART_TRIES,
    ) -> None:
        self.first, self.cap = first, cap
        self.restart_cap, self.restart_tries = restart_cap, restart_tries
        self.attempt = 0
        self.quick = 0  # attempts left under restart_cap
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The longest the next wait may be."""
        cap = min(self.cap, self.restart_cap) if self.quick > 0 else self.cap
        return min(cap, self.first * 2.0**self.attempt)

    def next(self) -> float:
        ceiling = self.ceiling()
        self.attempt = min(self.attempt + 1, 32)
        self.quick = max(self.quick - 1, 0)
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0

    def lost(self) -> None:
        """A connection that was up ended: reconnect soon, and keep retrying quickly."""
        self.attempt = 0
        self.quick = self.restart_tries


class Session:
    """One agent: its credentials, its forwarder and its reconnect loop."""

    def __init__(
        self,
        config: AgentConfig,
        forwarder: Forwarder,
        say: Say,
        server: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.forwarder = forwarder
        self.say = say
        self.url = tunnel_url(config, server)
        self.server = normalise_server(server or config.server)
        self.tunnel: Tunnel | None = None  # the current or last tunnel
        self.backoff = backoff or Backoff()
        self.connected = trio.Event()  # set on the first successful connection
        self.connections = 0
        self.ws: WebSocket | None = None  # the live link, if any
        # How the loop waits before reconnecting (tests hold it to observe `offline`).
        self.wait: Callable[[float], Awaitable[None]] = trio.sleep
        # Reconnects made at once after a server's go-away, without waiting (`wait`).
        self.immediate_reconnects = 0
        self._last_immediate = -math.inf
        # Where tunnels a server sent away finish their requests (`run`'s nursery).
        self._finishing: trio.Nursery | None = None
        # Set (and replaced) each time a tunnel comes up: the one sent away closes then.
        self._next_up = trio.Event()

    async def run(self) -> None:
        """Reconnect forever; raises AgentError when the server refuses the token."""
        # Tunnels a draining server sent away finish their requests in flight here while the
        # loop has connected again (`_serve`).
        try:
            async with trio.open_nursery() as finishing:
                self._finishing = finishing
                try:
                    await self._reconnect_forever()
                finally:
                    self._finishing = None
                    finishing.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the loop's own error (AgentError), bare
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _reconnect_forever(self) -> None:
        while True:
            self.say(f"connecting to {self.url}")
            self.tunnel = None
            up = self.connections
            try:
                await self.connect_once()
                reason = "the server closed the tunnel"
            except Exception as exc:  # ExceptionGroup too; never Cancelled
                refused = _rejected(exc, REVOKED_STATUSES)
                if refused is not None:
                    raise AgentError(
                        "token revoked: register again with a new code (the server answered "
                        f"HTTP {refused.status}: the sandbox was deleted or its token"
                        " revoked)"
                    ) from None
                other = _rejected(exc, {UPGRADE_REQUIRED})
                if other is not None:  # another tunnel protocol: retrying cannot help
                    line = await compat.upgrade_required(self.server, other.body)
                    raise AgentError(line) from None
                if not _retryable(exc):
                    raise
                reason = describe(exc, self.server)
            if self.connections > up:  # it was up: the server restarts, or the link broke
                self.backoff.lost()
                going_away = self.going_away()
                if going_away is not None:
                    reason = _go_away_reason(going_away)
                    if reason == SERVER_RESTARTING and self._may_reconnect_now():
                        self.say(f"{reason}, reconnecting now")
                        continue
                else:
                    reason = f"connection to the server lost: {reason}"
            delay = self.backoff.next()
            self.say(f"{reason}, reconnecting in {_seconds(delay)}")
            await self.wait(delay)

    def _may_reconnect_now(self) -> bool:
        """True (and counted) when a reconnect without a wait is allowed now."""
        now = trio.current_time()
        if now - self._last_immediate < IMMEDIATE_EVERY:
            return False
        self._last_immediate = now
        self.immediate_reconnects += 1
        return True

    def going_away(self) -> str | None:
        """The go-away message the server sent on the last tunnel, if it sent one."""
        return None if self.tunnel is None else self.tunnel.peer_going_away

    async def connect_once(self) -> None:
        """One connection: returns when its tunnel ended, or as soon as the server asked the
        agent to go ("server restarting": a replica draining), the old tunnel then finishing
        its requests in flight in the background while the caller connects again."""
        if self._finishing is not None:
            await self._finishing.start(self._serve)
        else:  # outside `run` (tests): the old tunnel finishes before this returns
            async with trio.open_nursery() as finishing:
                await finishing.start(self._serve)

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.lowlevel.checkpoint()
        headers = [
            (b"authorization", f"Bearer {self.config.tunnelToken}".encode()),
            (tunnel_version.HEADER.lower().encode(), str(compat.PROTOCOL).encode()),
        ]
        if self.config.allowedPorts:  # the server lists (and asks for) only these previews
            shared = ",".join(str(p) for p in self.config.allowedPorts)
            headers.append((PREVIEW_PORTS_HEADER.encode(), shared.encode()))
        moved = False
        try:
            async with open_websocket(
                self.url,
                headers,
                # The largest tunnel message the server may send us: the link closes with 1009
                # as soon as a frame header says a message grows past it, holding none of it.
                max_message=max_message_size(AGENT_SETTINGS.max_frame_payload),
                connect_timeout=30,
            ) as ws:
                self.ws = ws
                async with open_tunnel(
                    ws,
                    role=Role.CLIENT,
                    settings=AGENT_SETTINGS,
                    handler=self.forwarder.handle,
                ) as tunnel:  # served until it ends, which also ends this block
                    self.tunnel = tunnel
                    self.connections += 1
                    self.connected.set()
                    self._next_up.set()  # a tunnel sent away may close now
                    self._next_up = trio.Event()
                    shared = ", ".join(str(p) for p in self.config.allowedPorts)
                    self.say(
                        f"connected: sandbox {self.config.sandboxId} ({self.config.name})"
                        f" is running, forwarding to {self.forwarder.base_url}"
                        + (f"; sharing port(s) {shared} as previews" if shared else "")
                    )
                    self.forwarder.on_success = self.backoff.reset
                    async with trio.open_nursery() as beats:
                        beats.start_soon(self._healthy_after)
                        await tunnel.peer_went_away.wait()
                        beats.cancel_scope.cancel()
                    if tunnel.peer_going_away == SERVER_RESTARTING:
                        # Connect again now (another replica); this tunnel finishes what runs
                        # on it and closes once the new one is up (its server keeps the
                        # sandbox's ownership until then), or when its server closes it.
                        moved = True
                        next_up = self._next_up
                        task_status.started()
                        await next_up.wait()
                        await tunnel.wait_idle()
                        await tunnel.aclose("moved to a new connection")
        except Exception:
            if not moved:
                raise
            # The old tunnel's end after the move: nothing the new connection depends on.
        if not moved:
            task_status.started()

    async def _healthy_after(self) -> None:
        await trio.sleep(HEALTHY_AFTER)
        self.backoff.reset()


_RETRYABLE = (
    HandshakeError,  # a refusal (`Refused`) too, unless its status stops the agent
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    ProtocolError,
)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _rejected(exc: BaseException, statuses: Collection[int]) -> Refused | None:
    """The server's refusal of the upgrade, when its status is one of `statuses`."""
    for leaf in _leaves(exc):
        if isinstance(leaf, Refused) and leaf.status in statuses:
            return leaf
    return None


def _retryable(exc: BaseException) -> bool:
    return all(isinstance(leaf, _RETRYABLE) for leaf in _leaves(exc))


def _go_away_reason(message: str) -> str:
    if message == SERVER_RESTARTING or "restart" in message:
        return SERVER_RESTARTING
    return f"the server closed the tunnel ({message})"


def _seconds(delay: float) -> str:
    return f"{delay:.1f} s" if delay < 10 else f"{delay:.0f} s"


def describe(exc: BaseException, server: str = "the server") -> str:
    """What went wrong, in words (never just an exception's class name)."""
    exc = _leaves(exc)[0]
    if isinstance(exc, Refused):
        if exc.status in (502, 503, 504):
            return f"server at {server} not ready (HTTP {exc.status}): restarting?"
        return f"the server at {server} answered HTTP {exc.status} instead of a tunnel"
    if isinstance(exc, HandshakeError):
        return f"server at {server} closed the connection before the tunnel opened"
    if isinstance(exc, ConnectionClosed):
        why = f": {exc.reason}" if exc.reason else ""
        return f"the connection closed (WebSocket {exc.code} {exc.name}{why})"
    if isinstance(exc, TunnelClosed):
        return str(exc) or "the tunnel closed"
    if isinstance(exc, trio.TooSlowError):
        return f"server unreachable at {server}: no answer in time"
    if isinstance(exc, OSError):
        why = (exc.strerror or str(exc) or "network error").lower()
        return f"server unreachable at {server}: {why}"
    if isinstance(exc, ProtocolError):
        return f"tunnel protocol error: {exc}"
    if isinstance(exc, trio.BrokenResourceError):
        return "the connection to the server broke"
    return str(exc) or f"unexpected error ({type(exc).__name__})"


async def connect(
    *,
    server: str | None = None,
    code: str | None = None,
    name: str | None = None,
    opencode_url: str = DEFAULT_OPENCODE_URL,
    config_path: str | Path = DEFAULT_CONFIG,
    opencode_password: str | None = None,
    allow_ports: Sequence[int] | None = None,
    say: Say = print,
    handle_signals: bool = False,
    started: Callable[[Session], None] | None = None,
) -> int:
    """Register if needed, then serve the tunnel until stopped; returns the exit status.
    `allow_ports` (given): the ports shared as previews from now on, saved with the
    credentials; not given: the saved ones."""
    path = config_file(config_path)
    masking.install()  # every tunnel frame the agent sends is masked: do it in C
    try:
        try:
            forwarder = Forwarder(opencode_url, opencode_password, say)
        except ValueError as exc:
            raise AgentError(str(exc), status=2) from None
        shared = None if allow_ports is None else checked_ports(allow_ports, opencode_url)
        saved = None if server else load_config(path)
        target = server or (saved.server if saved else None)
        if target:  # before a code is spent: a server this agent cannot talk to says so now
            try:
                await check_server(normalise_server(target))
            except IncompatibleServer as exc:
                raise AgentError(str(exc)) from None
        config = await credentials(path, server, code, name, say)
        if shared is not None and shared != config.allowedPorts:
            config = replace(config, allowedPorts=shared)
            save_config(path, config)
        forwarder.shared_ports = frozenset(config.allowedPorts)
        session = Session(config, forwarder, say, server=server)
    except AgentError as exc:
        say(f"error: {exc.message}")
        await trio.lowlevel.checkpoint()  # the error may come before anything was awaited
        return exc.status
    if started is not None:
        started(session)
    status = 0
    async with forwarder:
        try:
            if handle_signals:
                status = await _until_signal(session)
            else:
                await session.run()
        except* AgentError as group:
            error = _leaves(group)[0]
            assert isinstance(error, AgentError)
            say(f"stopped: {error.message}")
            status = error.status
    return status


async def credentials(
    path: Path, server: str | None, code: str | None, name: str | None, say: Say
) -> AgentConfig:
    """The saved registration, or a new one when a code is given (which always registers)."""
    saved = load_config(path)
    if code:
        target = server or (saved.server if saved else None)
        if not target:
            raise AgentError("--server is needed to register with --code", status=2)
        config = await register(target, code, name or default_name())
        save_config(path, config)
        say(
            f"registered as sandbox {config.sandboxId} in workspace {config.workspaceId}; "
            f"credentials saved to {path}"
        )
        return config
    if saved is None:
        raise AgentError(
            f"no saved registration in {path}: run once with --server and --code "
            "(a code comes from the web UI's laptop button)",
            status=2,
        )
    await trio.lowlevel.checkpoint()  # the saved registration is read without awaiting
    return saved


async def _until_signal(session: Session) -> int:
    status = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal status
                async for signum in signals:
                    status = 130 if signum == signal.SIGINT else 0
                    session.say("stopping")
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await session.run()
            nursery.cancel_scope.cancel()
    return status
