"""Refusal counting and logging stay bounded however fast a sandbox is refused."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from agentserver.llm.refusals import RefusalCounts, RefusalLog
from agentserver.llm.rules import Caller, Refusal

CALLER = Caller("sb1", "ws1", "u1", "box", "running")


def refusal(reason: str = "quota_reached", caller: Caller | None = CALLER) -> Refusal:
    found = Refusal(429, "no", reason=reason)
    found.caller = caller
    found.model = "claude-x"
    return found


async def test_refusals_arriving_during_a_write_are_written_together() -> None:
    """While one write is in flight, 9 more refusals cost a single further write."""
    writes: list[int] = []
    release = trio.Event()

    async def write(caller: Caller, reason: str, count: int, model: str | None) -> None:
        writes.append(count)
        if len(writes) == 1:
            await release.wait()

    counts = RefusalCounts(write)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(counts.add, refusal())
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(9):
            await counts.add(refusal())  # handed to the writer in flight: returns at once
        release.set()
    assert writes == [1, 9]


async def test_refusals_without_a_sandbox_are_not_written() -> None:
    writes: list[int] = []

    async def write(caller: Caller, reason: str, count: int, model: str | None) -> None:
        writes.append(count)

    await RefusalCounts(write).add(refusal(caller=None))
    assert writes == []


def test_one_log_line_per_sandbox_and_reason_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentserver.llm.proxy")
    log = RefusalLog(every=60)
    written = [log.note(refusal()) for _ in range(100)]
    written.append(log.note(refusal("rate_limited")))
    assert written.count(True) == 2
    assert len(caplog.records) == 2
    log.every = 0  # the minute is over: the next line tells how many were held back
    log._held = {k: (0.0, held) for k, (_, held) in log._held.items()}
    assert log.note(refusal())
    assert "+99 more" in caplog.records[-1].getMessage()
