"""Failure throttling: a sliding window per key, with the wait reported in whole seconds."""

from __future__ import annotations

from agentserver.auth.throttle import MemoryCounts, Throttle


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(limit: int = 3, window: float = 60.0) -> tuple[Throttle, Clock]:
    clock = Clock()
    return Throttle("test", limit=limit, window=window, counts=MemoryCounts(clock)), clock


async def test_under_the_limit_there_is_no_wait() -> None:
    """Fewer failures than the limit leave the key free to try."""
    throttle, _ = make()
    await throttle.fail("user:a")
    await throttle.fail("user:a")
    assert await throttle.retry_after("user:a") == 0


async def test_at_the_limit_the_wait_runs_until_the_oldest_failure_leaves_the_window() -> None:
    """The wait is the time until the oldest of the counted failures is `window` old."""
    throttle, clock = make()
    await throttle.fail("user:a")
    clock.now += 10
    await throttle.fail("user:a")
    await throttle.fail("user:a")
    assert await throttle.retry_after("user:a") == 50
    clock.now += 49.5
    assert await throttle.retry_after("user:a") == 1  # rounded up, never 0 while still blocked
    clock.now += 0.5
    assert await throttle.retry_after("user:a") == 0


async def test_keys_are_independent_and_any_blocked_key_blocks() -> None:
    """One key's failures do not block another; asking about several keys takes the longest."""
    throttle, clock = make(limit=2)
    await throttle.fail("user:a", "addr:1")
    clock.now += 5
    await throttle.fail("user:a", "addr:1")
    assert await throttle.retry_after("user:b") == 0
    assert await throttle.retry_after("user:b", "addr:1") == 55
    assert await throttle.retry_after("user:a", "addr:2") == 55


async def test_reset_clears_one_key_only() -> None:
    """A success resets its own key (the username) but not the client address."""
    throttle, _ = make(limit=1)
    await throttle.fail("user:a", "addr:1")
    await throttle.reset("user:a")
    assert await throttle.retry_after("user:a") == 0
    assert await throttle.retry_after("addr:1") == 60


async def test_memory_stays_bounded_under_a_spray_of_keys() -> None:
    """A flood of distinct keys does not grow the table past its bound."""
    throttle, _ = make(limit=1)
    for i in range(100_050):
        await throttle.fail(f"addr:{i}")
    counts = throttle.counts
    assert isinstance(counts, MemoryCounts)
    assert len(counts._failures) <= 100_000
    assert await throttle.retry_after("addr:100049") == 60
