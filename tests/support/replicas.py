"""Several `agentserver serve` processes on loopback sharing one PostgreSQL, behind a small
round-robin TCP balancer: the harness of the several-replicas tests (issue 16).

Each replica has its own data directory and port, and every one's `--base-domain` is the
balancer's address, as behind a real ingress. The balancer spreads new connections over the
replicas in rotation and, as an ingress does, tries the next one when a replica refuses the
connection; once a connection is made it only relays bytes, so a request that was sent is
never sent again. Taking a replica out of rotation before stopping it is what Kubernetes does
with a terminating pod's endpoint (`Replicas.terminate`); a replica killed with SIGKILL stays
in rotation and is skipped because it refuses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from agentserver.agent.connect import Session, connect
from agentserver.settings import OPTIONS
from tests.support.workspace_events import watch_statuses

BIN = Path(sys.executable).parent / "agentserver"
LISTENING = re.compile(rb"listening on http://[^:/]+:(\d+)")
START_TIMEOUT = 120.0
RELAY_CHUNK = 256 * 1024


class Output:
    """A child's output as it arrives, and a way to wait for a line in it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._changed = trio.Event()
        self.ended = False

    def add(self, chunk: bytes) -> None:
        if chunk:
            self.data += chunk
        else:
            self.ended = True
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, pattern: re.Pattern[bytes], start: int = 0) -> re.Match[bytes]:
        """The first match of `pattern` from offset `start`, once it has been written."""
        while (match := pattern.search(self.data, start)) is None:
            if self.ended:
                raise AssertionError(f"output ended before {pattern.pattern!r}: {self.text()}")
            await self._changed.wait()
        return match

    def text(self) -> str:
        return self.data.decode(errors="replace")


class Balancer:
    """A round-robin TCP balancer on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self.port = 0
        # Backend address by replica index; those out of rotation get no new connection.
        self.backends: dict[int, int] = {}
        self.out: set[int] = set()
        self._next = 0
        # The replica each accepted connection went to, in order (None: every one refused).
        self.routed: list[int | None] = []
        self.refused = 0  # connects a replica refused (and the next one was tried)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rotation(self) -> list[int]:
        return [i for i in sorted(self.backends) if i not in self.out]

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _connect(self) -> tuple[int | None, trio.SocketStream | None]:
        """The next replica in rotation that accepts the connection."""
        candidates = self.rotation()
        if not candidates:
            await trio.lowlevel.checkpoint()
            return None, None
        start = self._next
        self._next += 1
        for step in range(len(candidates)):
            index = candidates[(start + step) % len(candidates)]
            try:
                return index, await trio.open_tcp_stream("127.0.0.1", self.backends[index])
            except OSError:  # refused: it is down or restarting, so try the next one
                self.refused += 1
        return None, None

    async def _handle(self, client: trio.SocketStream) -> None:
        index, upstream = await self._connect()
        self.routed.append(index)
        if upstream is None:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                try:
                    while chunk := await source.receive_some(RELAY_CHUNK):
                        await sink.send_all(chunk)
                    await sink.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    nursery.cancel_scope.cancel()  # one side broke: so does the other

            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


@dataclass
class Replica:
    """One `agentserver serve` child process."""

    index: int
    data_dir: Path
    port: int = 0
    process: trio.Process | None = None
    output: Output = field(default_factory=Output)
    earlier: list[Output] = field(default_factory=list)  # the runs before this one

    def log(self) -> str:
        """Everything every run of this replica printed, run after run."""
        runs = [*self.earlier, self.output]
        return "".join(f"--- run {n}\n{o.text()}" for n, o in enumerate(runs))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def replica_env(db_url: str, **extra: str) -> dict[str, str]:
    """The caller's environment without agentserver variables, plus the replicas' own."""
    names = {o.env for o in OPTIONS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(DATABASE_URL=db_url, IDLE_TIMEOUT="0", **extra)
    return env


class Replicas:
    """N replicas behind one balancer; processes and pumps live in `nursery`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        db_url: str,
        root: Path,
        balancer: Balancer,
        options: dict[str, str] | None = None,
    ) -> None:
        self.nursery = nursery
        self.db_url = db_url
        self.root = root
        self.balancer = balancer
        # Extra `serve` flags without their dashes, e.g. {"shutdown-grace": "10s"}.
        self.options = options or {}
        self.replicas: list[Replica] = []

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def url(self) -> str:
        """Where clients go: the balancer."""
        return self.balancer.url

    @property
    def base_domain(self) -> str:
        return f"localhost:{self.balancer.port}"

    async def add(self) -> Replica:
        """Start one more replica (its data directory is new) and put it in rotation."""
        index = len(self.replicas)
        data_dir = self.root / f"replica-{index}"
        data_dir.mkdir(parents=True)
        replica = Replica(index, data_dir)
        self.replicas.append(replica)
        await self.start(index)
        return replica

    async def start(self, index: int) -> Replica:
        """Start replica `index` (on its earlier port, if it ran before) and put it back in
        rotation once it prints that it listens."""
        replica = self.replicas[index]
        assert not replica.running, f"replica {index} is running"
        args = [
            str(BIN),
            "serve",
            "--listen",
            f"127.0.0.1:{replica.port}",
            "--data-dir",
            str(replica.data_dir),
            "--base-domain",
            self.base_domain,
        ]
        for name, value in self.options.items():
            args += [f"--{name}", value]
        if replica.output.data:
            replica.earlier.append(replica.output)
        replica.output = Output()
        replica.process = await trio.lowlevel.open_process(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=replica_env(self.db_url),
        )
        self.nursery.start_soon(self._read_output, replica.process, replica.output)
        with trio.fail_after(START_TIMEOUT):
            match = await replica.output.wait_for(LISTENING)
        replica.port = int(match.group(1))
        self.balancer.backends[index] = replica.port
        self.balancer.out.discard(index)
        return replica

    @staticmethod
    async def _read_output(process: trio.Process, output: Output) -> None:
        assert process.stdout is not None
        while True:
            chunk = await process.stdout.receive_some(65536)
            output.add(chunk)
            if not chunk:
                return

    def signal(self, index: int, signum: signal.Signals = signal.SIGTERM) -> None:
        """Send `signum`; SIGTERM first takes the replica out of rotation (as Kubernetes takes
        a terminating pod out of its service's endpoints)."""
        process = self.replicas[index].process
        assert process is not None
        if signum == signal.SIGTERM:
            self.balancer.out.add(index)
        process.send_signal(signum)

    async def wait_exit(self, index: int, within: float) -> int:
        """The exit status, which must come within `within` seconds."""
        replica = self.replicas[index]
        assert replica.process is not None
        with trio.move_on_after(within):
            return await replica.process.wait()
        raise AssertionError(
            f"replica {index} still runs after {within} s; its output ends:\n"
            + replica.output.text()[-4000:]
        )

    async def terminate(self, index: int, within: float = 60.0) -> int:
        """SIGTERM (a drain) and its exit status."""
        self.signal(index, signal.SIGTERM)
        return await self.wait_exit(index, within)

    async def kill(self, index: int) -> int:
        """SIGKILL: no drain at all; the replica stays in rotation and refuses connections."""
        self.signal(index, signal.SIGKILL)
        return await self.wait_exit(index, 10.0)

    async def aclose(self) -> None:
        """Stop every replica still running (drained, then killed if one hangs)."""
        for replica in self.replicas:
            if replica.running:
                self.signal(replica.index, signal.SIGTERM)
        for replica in self.replicas:
            if replica.process is None:
                continue
            with trio.move_on_after(60):
                await replica.process.wait()
            if replica.process.returncode is None:
                replica.process.kill()
                await replica.process.wait()


@asynccontextmanager
async def open_replicas(
    db_url: str, root: Path, count: int = 3, **options: str
) -> AsyncIterator[Replicas]:
    """`count` replicas on `db_url` behind a balancer (options: `serve` flags, underscores
    for dashes), all stopped on exit."""
    flags = {name.replace("_", "-"): value for name, value in options.items()}
    async with trio.open_nursery() as nursery:
        balancer = Balancer()
        await nursery.start(balancer.serve)
        replicas = Replicas(nursery, db_url, root, balancer, flags)
        try:
            # One after the other: the first applies the migrations the others then find.
            for _ in range(count):
                await replicas.add()
            yield replicas
        finally:
            with trio.CancelScope(shield=True):
                await replicas.aclose()
            nursery.cancel_scope.cancel()
            for replica in replicas.replicas:  # read after a failure (pytest keeps tmp dirs)
                (replica.data_dir / "output.log").write_text(replica.log())


@pytest.fixture
async def replicas(db_url: str, tmp_path: Path) -> AsyncIterator[Replicas]:
    """Three replicas on one fresh database behind a round-robin balancer."""
    async with open_replicas(db_url, tmp_path / "replicas", shutdown_grace="20s") as found:
        yield found


@dataclass
class LocalAgent:
    """An in-process `agent connect` whose tunnel goes through the balancer."""

    session: Session
    lines: list[str]
    waits: list[float]  # the backoff waits it made
    reconnected: trio.Event  # set once it is connected a second time

    @property
    def sandbox_id(self) -> str:
        return self.session.config.sandboxId


async def start_agent(
    nursery: trio.Nursery,
    replicas: Replicas,
    owner: httpx.AsyncClient,
    workspace_id: str,
    opencode_url: str,
    config_path: Path,
    on: int,
) -> LocalAgent:
    """Register a local agent (forwarding to `opencode_url`) in the workspace `owner` owns and
    run it in `nursery` until its tunnel is up on replica `on` (the others are out of rotation
    while it connects, and back in afterwards)."""
    code = (await owner.post(f"/api/workspaces/{workspace_id}/agent-code")).json()["code"]
    lines: list[str] = []
    waits: list[float] = []
    reconnected = trio.Event()
    holder: list[Session] = []
    have_session = trio.Event()

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("connected:") and holder and holder[0].connections > 1:
            reconnected.set()

    async def recorded_wait(delay: float) -> None:
        waits.append(delay)
        await trio.sleep(delay)

    def started(session: Session) -> None:
        session.wait = recorded_wait
        holder.append(session)
        have_session.set()

    others = {i for i in range(len(replicas)) if i != on}
    replicas.balancer.out |= others
    nursery.start_soon(
        partial(
            connect,
            server=replicas.url,
            code=code,
            name="laptop",
            opencode_url=opencode_url,
            config_path=config_path,
            say=say,
            started=started,
        )
    )
    with trio.fail_after(60):
        await have_session.wait()
        await holder[0].connected.wait()
        # Connected is the agent's view; requests are served once the server says `running`
        # (its ownership claimed and the tunnel registered, a moment after the handshake).
        async with watch_statuses(owner, workspace_id) as statuses:
            await statuses.until(holder[0].config.sandboxId, "running")
    replicas.balancer.out -= others
    return LocalAgent(holder[0], lines, waits, reconnected)
