"""LLM limits decided in memory: a database snapshot plus this replica's own calls (pure).

Admission reads no database in the common case. Each workspace under a limit has an `Account`:
a `Snapshot` of what the database knew (rows written, and the calls other replicas hold in
flight, as `llm_workspace_load` counts them), refreshed by the usage recorder every sync, plus
the `Ticket`s of this replica's calls that are not in those rows yet (in flight: their
reservation; finished but not yet written: their real usage). Check and reservation happen in
one synchronous step, so calls on this replica are admitted one after the other, exactly as the
advisory lock serialised them before.

Bounds. On one replica the day's total passes the quota by at most one call's output (the last
call let in, as `check_limits` says), as before. Across replicas each one sees the others as of
its last sync (at most `SYNC_EVERY` plus a database round trip ago, or `STALE_AFTER` when the
recorder cannot reach the database, after which admission reads the database itself): the total
can pass the quota by at most one call's output per replica plus what the other replicas
admitted within that window. The per-minute count is conservative (a snapshot's requests are
counted until the next sync even if they left the window meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agentserver.llm.rules import check_limits

# The recorder refreshes the snapshots of the workspaces in use this often.
SYNC_EVERY = 0.5
# A snapshot older than this (the recorder cannot reach the database) is read again by admission.
STALE_AFTER = 5.0
# An account with nothing held is forgotten after this long without calls.
IDLE_AFTER = 60.0
WINDOW = 60.0  # the per-minute limit's window


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the database counted for a workspace, and when (monotonic)."""

    recent_requests: int
    window_frees_in: int
    tokens_today: int
    day_ends_in: int
    taken_at: float

    @classmethod
    def of(cls, load: dict[str, Any], taken_at: float) -> Snapshot:
        return cls(
            int(load["recent_requests"]),
            int(load["window_frees_in"]),
            int(load["tokens_today"]),
            int(load["day_ends_in"]),
            taken_at,
        )


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted call's hold on its workspace until its row is in a snapshot."""

    workspace_id: str
    reserved: int
    admitted_at: float
    used: int | None = None  # its real usage, once it finished

    @property
    def held(self) -> int:
        return self.reserved if self.used is None else self.used


@dataclass(slots=True)
class Account:
    """One workspace on this replica."""

    snapshot: Snapshot | None = None
    open: set[Ticket] = field(default_factory=set)
    last_used: float = 0.0


class Ledger:
    """Accounts of the workspaces under a limit; `generation` counts installed syncs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.accounts: dict[str, Account] = {}
        self.generation = 0

    def needs_load(self, workspace_id: str) -> bool:
        """True when admission must read the database first (no snapshot, or a stale one)."""
        account = self.accounts.get(workspace_id)
        snapshot = account.snapshot if account else None
        if snapshot is None:
            return True
        age = self.clock() - snapshot.taken_at
        return age > STALE_AFTER or age >= snapshot.day_ends_in

    def install(
        self, workspace_id: str, load: dict[str, Any], taken_at: float, generation: int
    ) -> None:
        """A snapshot read by admission itself; dropped if a sync landed since it was read (the
        account is tracked from now on, so the next sync brings one)."""
        account = self.accounts.setdefault(workspace_id, Account(last_used=self.clock()))
        if generation == self.generation:
            account.snapshot = Snapshot.of(load, taken_at)

    def admit(
        self, workspace_id: str, rpm: int, per_day: int, reserved: int, incoming: int
    ) -> Ticket:
        """Check the limits and hold `reserved` tokens, in one step; raises the 429 `Refusal`."""
        now = self.clock()
        account = self.accounts.setdefault(workspace_id, Account())
        account.last_used = now
        check_limits(rpm, per_day, self.load(workspace_id), incoming)
        ticket = Ticket(workspace_id, reserved, now)
        account.open.add(ticket)
        return ticket

    def load(self, workspace_id: str) -> dict[str, Any]:
        """The workspace's counts as `check_limits` reads them: the snapshot (aged) plus what
        this replica holds that the snapshot's rows do not include."""
        now = self.clock()
        account = self.accounts.get(workspace_id) or Account()
        snapshot = account.snapshot or Snapshot(0, 0, 0, 86400, now)
        age = now - snapshot.taken_at
        recent = [t.admitted_at for t in account.open if now - t.admitted_at < WINDOW]
        frees = [WINDOW - (now - t) for t in recent]
        if snapshot.recent_requests:
            frees.append(snapshot.window_frees_in - age)
        return {
            "recent_requests": snapshot.recent_requests + len(recent),
            "window_frees_in": int(-(-min(frees) // 1)) if frees else int(WINDOW),
            "tokens_today": snapshot.tokens_today + sum(t.held for t in account.open),
            "day_ends_in": int(snapshot.day_ends_in - age),
        }

    @staticmethod
    def settle(ticket: Ticket, used: int) -> None:
        """The call finished: its real usage replaces its reservation until its row is written."""
        ticket.used = used

    def held_in_flight(self, workspace_id: str, written: Iterable[Ticket] = ()) -> tuple[int, int]:
        """Tokens and calls this replica holds for the workspace beyond `written` (what other
        replicas must count of it)."""
        account = self.accounts.get(workspace_id)
        if account is None:
            return 0, 0
        left = account.open.difference(written)
        return sum(t.held for t in left), len(left)

    def tracked(self) -> list[str]:
        """Workspaces to sync: those holding calls or used lately (the rest are forgotten)."""
        now = self.clock()
        for workspace_id, account in list(self.accounts.items()):
            if not account.open and now - account.last_used > IDLE_AFTER:
                del self.accounts[workspace_id]
        return list(self.accounts)

    def synced(
        self, written: Iterable[Ticket], loads: dict[str, dict[str, Any]], taken_at: float
    ) -> None:
        """A sync committed: `written` calls are rows now, and `loads` count them."""
        self.generation += 1
        for ticket in written:
            account = self.accounts.get(ticket.workspace_id)
            if account is not None:
                account.open.discard(ticket)
        for workspace_id, load in loads.items():
            account = self.accounts.get(workspace_id)
            if account is not None:
                account.snapshot = Snapshot.of(load, taken_at)
