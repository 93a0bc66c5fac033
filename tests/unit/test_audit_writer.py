"""The audit writer: batches off the action's path, retries failed writes, bounded memory, drains
on close; and the pure shape of entries."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from agentserver.audit import (
    Action,
    Actor,
    ActorKind,
    AuditLog,
    Entry,
    Result,
    Target,
    open_audit_log,
)
from agentserver.audit.entries import DETAILS_MAX, details_json
from agentserver.errors import DatabaseUnavailable, Invalid

ALICE = Actor.user("u1", "alice")


class ListStore:
    """Keeps every batch it is given; `failures` are raised by the next inserts, in order."""

    def __init__(self, *failures: Exception) -> None:
        self.batches: list[list[Entry]] = []
        self.failures = list(failures)
        self.gate: trio.Event | None = None  # when set up, inserts wait for it
        # Like a worker thread: an insert under way finishes even when its task is cancelled.
        self.uncancellable = False

    async def insert(self, entries: Sequence[Entry]) -> None:
        if self.gate is not None:
            with trio.CancelScope(shield=self.uncancellable):
                await self.gate.wait()
        else:
            await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        if any(e.reason == "unstorable" for e in entries):
            raise Invalid("a value is out of range")
        self.batches.append(list(entries))

    async def prune(self, days: int) -> int:
        await trio.lowlevel.checkpoint()
        return 0

    @property
    def stored(self) -> list[Entry]:
        return [e for batch in self.batches for e in batch]


async def record_n(audit: AuditLog, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        await audit.record(ALICE, Action.SANDBOX_PAUSED, Target.of("sandbox", f"s{i}"))


async def test_entries_queued_together_are_stored_in_one_batch() -> None:
    """Entries recorded before the writer looks are stored by one insert, in order."""
    store = ListStore()
    audit = AuditLog(store)
    await record_n(audit, 5)
    assert store.batches == []  # recording stored nothing itself
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        await audit.flush()
        audit.close()
    assert len(store.batches) == 1
    assert [e.target.id for e in store.stored] == ["s0", "s1", "s2", "s3", "s4"]
    assert audit.drained.is_set()


async def test_a_batch_holds_at_most_batch_max_entries() -> None:
    """Seven queued entries with batch_max 3 are stored as 3, 3 and 1."""
    store = ListStore()
    audit = AuditLog(store, batch_max=3)
    await record_n(audit, 7)
    audit.close()
    await audit.run()
    assert [len(b) for b in store.batches] == [3, 3, 1]


async def test_a_failing_write_is_retried_with_the_same_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the store fails the batch is kept and tried again; nothing is lost or doubled."""
    store = ListStore(DatabaseUnavailable("down"), DatabaseUnavailable("down"))
    audit = AuditLog(store)
    await record_n(audit, 2)
    audit.close()
    await audit.run()
    assert [e.target.id for e in store.stored] == ["s0", "s1"]
    assert audit.written == 2
    assert audit.dropped == 0


async def test_the_writer_restarted_after_a_bug_stores_the_batch_it_held() -> None:
    """An unexpected error escapes the writer (its supervisor restarts it); the restarted
    writer stores the batch it was holding."""
    store = ListStore(RuntimeError("bug"))
    audit = AuditLog(store)
    await record_n(audit, 2)
    with pytest.raises(RuntimeError):
        await audit.run()
    assert audit.backlog == 2
    audit.close()
    await audit.run()
    assert [e.target.id for e in store.stored] == ["s0", "s1"]


async def test_an_unstorable_entry_does_not_hold_up_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch the database refuses for a bad value is stored one by one: the bad entry goes
    to the server log, the others to the store."""
    store = ListStore()
    audit = AuditLog(store)
    await audit.record(ALICE, Action.SIGN_IN, reason="fine")
    await audit.record(ALICE, Action.SIGN_IN, reason="unstorable")
    await audit.record(ALICE, Action.SIGN_OUT)
    audit.close()
    with caplog.at_level(logging.ERROR, logger="agentserver.audit.writer"):
        await audit.run()
    assert [e.action for e in store.stored] == [Action.SIGN_IN, Action.SIGN_OUT]
    assert audit.dropped == 1
    assert '"reason":"unstorable"' in caplog.text


async def test_a_full_buffer_waits_briefly_then_logs_the_entry(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With the buffer full and nothing draining it, `record` waits `full_wait`, then keeps
    the entry in the server log only, and returns without raising."""
    audit = AuditLog(ListStore(), buffer=1, full_wait=2.0)
    await audit.record(ALICE, Action.SIGN_IN)
    started = trio.current_time()
    with caplog.at_level(logging.ERROR, logger="agentserver.audit.writer"):
        await audit.record(ALICE, Action.SIGN_OUT, details={"n": 2})
    assert trio.current_time() - started == pytest.approx(2.0)
    assert audit.dropped == 1
    assert "the audit buffer is full" in caplog.text
    assert '"action":"auth.sign_out"' in caplog.text


async def test_a_full_buffer_that_drains_in_time_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A burst beyond the buffer waits for the writer instead of dropping entries."""
    store = ListStore()
    store.gate = trio.Event()
    audit = AuditLog(store, buffer=2, batch_max=2, full_wait=5.0)
    await record_n(audit, 2)  # the buffer is full
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        await trio.testing.wait_all_tasks_blocked()  # the writer took both, waits at the gate
        await record_n(audit, 2, first=2)  # full again

        async def open_gate() -> None:
            await trio.sleep(1.0)  # the store becomes slow-but-working after a second
            assert store.gate is not None
            store.gate.set()

        nursery.start_soon(open_gate)
        await record_n(audit, 1, first=4)  # no room: waits until the writer takes more
        audit.close()
    assert [e.target.id for e in store.stored] == ["s0", "s1", "s2", "s3", "s4"]
    assert audit.dropped == 0


async def test_recording_after_close_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    """An entry recorded once the log is closed is logged, not raised into the action."""
    audit = AuditLog(ListStore())
    audit.close()
    with caplog.at_level(logging.ERROR, logger="agentserver.audit.writer"):
        await audit.record(ALICE, Action.SIGN_IN)
    assert audit.dropped == 1
    assert "closed" in caplog.text


async def test_a_disabled_log_records_nothing() -> None:
    """`enabled=False` (the benchmark's baseline) queues nothing."""
    audit = AuditLog(ListStore(), enabled=False)
    await audit.record(ALICE, Action.SIGN_IN)
    assert audit.backlog == 0


def test_entry_row_carries_actor_name_target_and_result() -> None:
    """The stored row keeps the actor's name as it was, the target and the result."""
    entry = Entry(
        at=datetime(2026, 1, 1, tzinfo=UTC),
        actor=Actor.token("t1", "ci", "u1", "alice"),
        action=Action.TOKEN_FIRST_USED,
        target=Target.of("token", "t1", "ci"),
        workspace_id="w1",
        result=Result.REFUSED,
        reason="expired",
    )
    assert entry.row()[1:5] == (ActorKind.TOKEN, "t1", "alice (token ci)", "u1")
    assert entry.row()[5:] == (
        "token.first_used",
        "token",
        "t1",
        "ci",
        "w1",
        None,
        "refused",
        "expired",
        "{}",
    )


def test_text_postgres_cannot_hold_is_removed() -> None:
    """NUL characters (refused by PostgreSQL text and jsonb) never reach the store."""
    assert Actor.user(None, "a\x00b").name == "ab"
    assert json.loads(details_json({"login": "x\x00y"})) == {"login": "xy"}


def test_oversized_details_are_replaced_by_a_marker() -> None:
    """Details larger than DETAILS_MAX are not stored whole."""
    assert details_json({"blob": "x" * DETAILS_MAX}) == '{"truncated":true}'
    assert details_json({"ok": 1}) == '{"ok":1}'


async def test_entries_recorded_before_a_cancellation_are_still_stored() -> None:
    """Leaving `open_audit_log` by cancellation stops the writer and stores what was queued,
    each entry once."""
    store = ListStore()
    with trio.CancelScope() as scope:
        async with open_audit_log(store, retention_days=0) as audit:
            await record_n(audit, 3)
            scope.cancel()
            await trio.lowlevel.checkpoint()
    assert [e.target.id for e in store.stored] == ["s0", "s1", "s2"]
    assert audit.drained.is_set()


async def test_a_write_under_way_at_shutdown_is_not_stored_twice() -> None:
    """The writer stopped in the middle of an insert finishes it; the drain does not repeat it."""
    store = ListStore()
    store.gate = trio.Event()
    store.uncancellable = True
    async with trio.open_nursery() as nursery:

        async def open_gate_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            assert store.gate is not None
            store.gate.set()

        async with open_audit_log(store, retention_days=0, linger=0) as audit:
            await record_n(audit, 2)
            await trio.testing.wait_all_tasks_blocked()  # the writer waits at the gate
            await record_n(audit, 1, first=2)
            nursery.start_soon(open_gate_soon)
    assert len(store.batches) == 2  # the one under way, then the drain's
    assert [e.target.id for e in store.stored] == ["s0", "s1", "s2"]
