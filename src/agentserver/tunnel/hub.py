"""The hub: which live tunnel serves each local sandbox, on this server process.

One tunnel per sandbox, registered with the generation under which this replica owns it in the
database (cluster/owners.py): a relayed request names the generation it expects, and an older
one is not served. A new tunnel for the same sandbox replaces (and closes) the old one; the
old one's end must then not unregister the new one, so `unregister` takes the tunnel it means.
Status changes derived from the hub (running / offline) are serialised per sandbox with
`status_lock`, and the caller reads the hub *inside* the lock, so the last writer always wrote
the hub's current state no matter how a close and a reconnect interleave.
"""

from __future__ import annotations

import trio

from .transport import Tunnel

# The go-away message of a server that stops: agents read it as "reconnect soon".
SERVER_RESTARTING = "server restarting"


class Hub:
    """Sandbox id → the live `Tunnel` (server side); one per server (`Deps.hub`)."""

    def __init__(self) -> None:
        self._tunnels: dict[str, Tunnel] = {}
        # The ports each connected agent shares as previews (`agent connect --allow-port`).
        self._shared: dict[str, tuple[int, ...]] = {}
        self._generations: dict[str, int] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._finished: dict[Tunnel, trio.Event] = {}
        # Draining: tunnels that end are moving to another replica (their ownership is kept
        # until the new tunnel takes it over, so the sandbox never looks offline meanwhile).
        self.draining = False
        # Tunnels being claimed here: owned in the database already, not yet registered. A
        # request that finds this replica named as the owner waits for them (`claim_settled`).
        self._claims: dict[str, trio.Event] = {}

    def __len__(self) -> int:
        return len(self._tunnels)

    def get(self, sandbox_id: str) -> Tunnel | None:
        """The sandbox's live tunnel, or None (the agent is offline, or its tunnel is moving
        to another replica: it takes no new request)."""
        tunnel = self._tunnels.get(sandbox_id)
        return None if tunnel is None or tunnel.closed or tunnel.going_away else tunnel

    def moving(self, sandbox_id: str) -> bool:
        """True while the sandbox's tunnel here was told to go (`move_all`) and is still up:
        its agent is connecting elsewhere, and a request waits for the new owner."""
        tunnel = self._tunnels.get(sandbox_id)
        return tunnel is not None and not tunnel.closed and tunnel.going_away

    def move_all(self) -> int:
        """This replica is draining: every agent is told to connect again (elsewhere) while its
        requests in flight finish here; returns how many. The agent closes the old tunnel once
        it is idle (older agents reconnect when the server closes it at the end)."""
        self.draining = True
        for tunnel in self._tunnels.values():
            tunnel.go_away(SERVER_RESTARTING)
        return len(self._tunnels)

    def shared_ports(self, sandbox_id: str) -> tuple[int, ...]:
        """The ports the sandbox's connected agent shares as previews (none when offline)."""
        return self._shared.get(sandbox_id, ()) if self.get(sandbox_id) is not None else ()

    def generation(self, sandbox_id: str) -> int | None:
        """The ownership generation of the sandbox's live tunnel here, or None."""
        return self._generations.get(sandbox_id) if self.get(sandbox_id) is not None else None

    def claiming(self, sandbox_id: str) -> trio.Event:
        """A tunnel for the sandbox is about to be claimed here: the caller sets the event
        (`settle`) once it is registered, or its claim failed."""
        event = self._claims[sandbox_id] = trio.Event()
        return event

    def settle(self, sandbox_id: str, event: trio.Event) -> None:
        """The claim behind `event` is over (registered, or failed)."""
        event.set()
        if self._claims.get(sandbox_id) is event:
            del self._claims[sandbox_id]

    async def claim_settled(self, sandbox_id: str) -> None:
        """Return once no claim of the sandbox's tunnel is under way here (bound the wait
        with a cancel scope): the database may name this replica as the owner a moment
        before the tunnel is registered."""
        event = self._claims.get(sandbox_id)
        if event is None:
            await trio.lowlevel.checkpoint()
            return
        await event.wait()

    def tunnels(self) -> list[tuple[str, Tunnel, int]]:
        """Every registered tunnel: (sandbox id, tunnel, generation)."""
        return [(s, t, self._generations.get(s, 0)) for s, t in self._tunnels.items()]

    async def register(
        self,
        sandbox_id: str,
        tunnel: Tunnel,
        shared_ports: tuple[int, ...] = (),
        generation: int = 0,
    ) -> None:
        """Make `tunnel` the sandbox's tunnel (its agent sharing `shared_ports` as previews,
        owned under `generation`); a previous one is closed."""
        # Before any change: a cancel here leaves nothing registered for the caller to undo.
        await trio.lowlevel.checkpoint()
        previous = self._tunnels.get(sandbox_id)
        self._tunnels[sandbox_id] = tunnel
        self._shared[sandbox_id] = shared_ports
        self._generations[sandbox_id] = generation
        self._finished.setdefault(tunnel, trio.Event())
        if previous is not None and previous is not tunnel:
            await previous.aclose()

    def unregister(self, sandbox_id: str, tunnel: Tunnel) -> bool:
        """Forget `tunnel` if it is still the sandbox's tunnel; True when it was."""
        if self._tunnels.get(sandbox_id) is not tunnel:
            return False
        del self._tunnels[sandbox_id]
        self._shared.pop(sandbox_id, None)
        self._generations.pop(sandbox_id, None)
        return True

    def finish(self, tunnel: Tunnel) -> None:
        """The session that served `tunnel` is over (its status is written)."""
        event = self._finished.pop(tunnel, None)
        if event is not None:
            event.set()

    async def wait_finished(self, tunnel: Tunnel) -> None:
        """Wait until the session of `tunnel` is completely over."""
        event = self._finished.get(tunnel)
        if event is not None:
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def close(self, sandbox_id: str) -> bool:
        """Close the sandbox's tunnel (deleted or revoked); its session unregisters itself."""
        tunnel = self._tunnels.get(sandbox_id)
        if tunnel is None:
            await trio.lowlevel.checkpoint()
            return False
        await tunnel.aclose()
        return True

    async def close_all(self) -> None:
        """The server is stopping: every agent is told so (and reconnects soon)."""
        for tunnel in list(self._tunnels.values()):
            await tunnel.aclose(SERVER_RESTARTING)
        await trio.lowlevel.checkpoint()  # there may be none

    def status_lock(self, sandbox_id: str) -> trio.Lock:
        """The lock under which the sandbox's tunnel status is read and written."""
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = self._locks[sandbox_id] = trio.Lock()
        return lock

    def release_lock(self, sandbox_id: str) -> None:
        """Drop an idle lock of a sandbox without a tunnel, so the map does not grow forever."""
        lock = self._locks.get(sandbox_id)
        if (
            lock is not None
            and not lock.locked()
            and sandbox_id not in self._tunnels
            and lock.statistics().tasks_waiting == 0
        ):
            del self._locks[sandbox_id]
