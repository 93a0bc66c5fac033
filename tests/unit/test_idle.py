"""The idle watcher loop, on virtual time: it checks when the next sandbox is due, not on a tick."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.errors import DatabaseUnavailable
from agentserver.sandboxes.idle import MIN_WAIT, IdleWatcher


class FakeSandboxes:
    """Answers `pause_idle` from a script of "seconds until the next one is due" values."""

    def __init__(self, answers: list[float | Exception | None]) -> None:
        self.answers = answers
        self.calls: list[float] = []

    async def pause_idle(self, seconds: float) -> float | None:
        self.calls.append(trio.current_time())
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.mark.parametrize(
    ("due_in", "wait"),
    [(None, 60.0), (12.5, 12.5), (0.0, MIN_WAIT), (-3.0, MIN_WAIT), (500.0, 60.0)],
)
def test_next_wait_is_the_time_until_due_within_bounds(due_in: float | None, wait: float) -> None:
    """The watcher sleeps until the next sandbox is due, at least MIN_WAIT, at most one timeout."""
    assert IdleWatcher(FakeSandboxes([]), 60.0).next_wait(due_in) == wait


def test_a_zero_timeout_is_refused() -> None:
    """0 means "disabled": the feature does not start a watcher, and the class refuses one."""
    with pytest.raises(ValueError, match="positive"):
        IdleWatcher(FakeSandboxes([]), 0)


async def test_the_loop_wakes_exactly_when_sandboxes_are_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Checks happen at start, then when the reported next sandbox is due, then one timeout later
    when nothing runs; a failed check is retried after one timeout instead of crashing."""
    fake = FakeSandboxes([7.0, None, DatabaseUnavailable("down"), 2.0])
    watcher = IdleWatcher(fake, 30.0)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(watcher.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    offsets = [round(t - start, 3) for t in fake.calls]
    assert offsets[:5] == [0.0, 7.0, 37.0, 67.0, 69.0]


async def test_poke_checks_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """`poke` makes the watcher check now rather than at the next due time."""
    fake = FakeSandboxes([None, None])
    watcher = IdleWatcher(fake, 30.0)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(watcher.run)
        await trio.sleep(5)
        watcher.poke()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [round(t - start, 3) for t in fake.calls] == [0.0, 5.0]
