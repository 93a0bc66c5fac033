"""The LLM usage recorder over a stand-in database: batches, retries, and a drain that loses
nothing (virtual time)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from agentserver.errors import DatabaseUnavailable
from agentserver.llm.ledger import Ledger
from agentserver.llm.recorder import UsageRecorder

LOAD = {"recent_requests": 0, "window_frees_in": 0, "tokens_today": 0, "day_ends_in": 3600}


class Tx:
    def __init__(self, db: StandInDb) -> None:
        self.db = db

    def exec_many(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.db.batches.append([row["id"] for row in rows])

    def exec(self, name: str, **params: Any) -> int:
        return 1

    def rows(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return [LOAD]


class StandInDb:
    """Records each batch; fails the first `failures` transactions as if the database were down."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[int]] = []

    async def transaction(self, fn: Any) -> Any:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("the database is unavailable")
        return fn(Tx(self))


async def test_rows_recorded_together_are_written_in_one_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Calls finishing within the batching window cost one transaction between them."""
    db = StandInDb()
    recorder = UsageRecorder(db, Ledger())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for index in range(5):
            await recorder.record({"id": index}, None)
        await recorder.flush()
        recorder.close()
    assert db.batches == [[0, 1, 2, 3, 4]]


async def test_an_unreachable_database_is_retried_and_nothing_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Rows wait in the buffer while the database is down and are written once it is back."""
    db = StandInDb(failures=3)
    recorder = UsageRecorder(db, Ledger())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        await recorder.record({"id": 1}, None)
        await recorder.record({"id": 2}, None)
        with trio.fail_after(60):
            await recorder.flush()
        recorder.close()
    assert db.batches == [[1, 2]]


async def test_closing_drains_what_is_buffered(autojump_clock: trio.testing.MockClock) -> None:
    """Rows recorded just before close are written before the writer returns."""
    db = StandInDb()
    recorder = UsageRecorder(db, Ledger())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for index in range(3):
            await recorder.record({"id": index}, None)
        recorder.close()
    assert [row for batch in db.batches for row in batch] == [0, 1, 2]


async def test_a_full_buffer_makes_the_caller_wait_not_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past the buffer's bound `record` waits for the writer; every row still arrives."""
    db = StandInDb(failures=2)
    recorder = UsageRecorder(db, Ledger(), buffer=2)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for index in range(6):
            await recorder.record({"id": index}, None)
        recorder.close()
    assert [row for batch in db.batches for row in batch] == list(range(6))
