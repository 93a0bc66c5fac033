"""The supervisor of long-lived tasks, on virtual time: failures are logged and retried."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from agentserver.supervise import Backoff, supervise


class Script:
    """A long-lived task that starts, then fails or returns as its script says, noting when."""

    def __init__(self, *outcomes: Exception | float | None) -> None:
        self.outcomes = list(outcomes)  # an exception to raise, seconds to run, None to return
        self.runs: list[float] = []

    async def run(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs.append(trio.current_time())
        task_status.started("ready")
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is not None:
            await trio.sleep(outcome)
            raise RuntimeError("broke after a while")
        await trio.lowlevel.checkpoint()


async def test_a_failing_iteration_is_logged_and_retried_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that raises after it started is logged with its traceback and run again after the
    backoff; its nursery (the server's) lives on and the task ends when it returns."""
    script = Script(RuntimeError("boom"), KeyError("gone"), None)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        ready = await nursery.start(supervise, "test loop", script.run)
    assert ready == "ready"
    assert [round(t - start, 3) for t in script.runs] == [0.0, 1.0, 3.0]
    failures = [r for r in caplog.records if r.name == "agentserver.supervise"]
    assert [r.getMessage() for r in failures] == [
        "test loop failed; starting it again in 1 s",
        "test loop failed; starting it again in 2 s",
    ]
    assert all(r.exc_info is not None for r in failures)


async def test_a_failure_before_the_first_start_propagates() -> None:
    """A task that fails before it reports itself started is a startup error for the caller."""

    async def broken(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.lowlevel.checkpoint()
        raise OSError("cannot open")

    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError, match="cannot open"):
            await nursery.start(supervise, "broken", broken)


async def test_backoff_doubles_to_its_ceiling_and_resets_after_a_long_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Back-to-back failures wait 1, 2, 4, 4 s (ceiling 4); after a run longer than the ceiling
    the next wait is the first one again."""
    boom = RuntimeError("boom")
    script = Script(boom, boom, boom, boom, 10.0, boom, None)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(
            lambda task_status: supervise(
                "loop", script.run, backoff=Backoff(1.0, 4.0), task_status=task_status
            )
        )
    offsets = [round(t - start, 3) for t in script.runs]
    # runs at 0, +1, +2, +4, then one lasting 10 s fails at 21 → +1 → 22, then fails → +2 → 24
    assert offsets == [0.0, 1.0, 3.0, 7.0, 11.0, 22.0, 24.0]


def test_backoff_next_is_bounded() -> None:
    """The delay after `d` is twice `d`, at least `first` and at most `ceiling`."""
    backoff = Backoff(0.5, 30.0)
    assert [backoff.next(d) for d in (0.0, 0.5, 8.0, 20.0, 100.0)] == [0.5, 1.0, 16.0, 30.0, 30.0]
