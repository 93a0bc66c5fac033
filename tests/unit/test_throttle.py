"""Failure throttling: a sliding window per key, with the wait reported in whole seconds."""

from __future__ import annotations

from agentserver.auth.throttle import Throttle


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(limit: int = 3, window: float = 60.0) -> tuple[Throttle, Clock]:
    clock = Clock()
    return Throttle(limit=limit, window=window, clock=clock), clock


def test_under_the_limit_there_is_no_wait() -> None:
    """Fewer failures than the limit leave the key free to try."""
    throttle, _ = make()
    throttle.fail("user:a")
    throttle.fail("user:a")
    assert throttle.retry_after("user:a") == 0


def test_at_the_limit_the_wait_runs_until_the_oldest_failure_leaves_the_window() -> None:
    """The wait is the time until the oldest of the counted failures is `window` old."""
    throttle, clock = make()
    throttle.fail("user:a")
    clock.now += 10
    throttle.fail("user:a")
    throttle.fail("user:a")
    assert throttle.retry_after("user:a") == 50
    clock.now += 49.5
    assert throttle.retry_after("user:a") == 1  # rounded up, never 0 while still blocked
    clock.now += 0.5
    assert throttle.retry_after("user:a") == 0


def test_keys_are_independent_and_any_blocked_key_blocks() -> None:
    """One key's failures do not block another; asking about several keys takes the longest."""
    throttle, clock = make(limit=2)
    throttle.fail("user:a", "addr:1")
    clock.now += 5
    throttle.fail("user:a", "addr:1")
    assert throttle.retry_after("user:b") == 0
    assert throttle.retry_after("user:b", "addr:1") == 55
    assert throttle.retry_after("user:a", "addr:2") == 55


def test_reset_clears_one_key_only() -> None:
    """A success resets its own key (the username) but not the client address."""
    throttle, _ = make(limit=1)
    throttle.fail("user:a", "addr:1")
    throttle.reset("user:a")
    assert throttle.retry_after("user:a") == 0
    assert throttle.retry_after("addr:1") == 60


def test_memory_stays_bounded_under_a_spray_of_keys() -> None:
    """A flood of distinct keys does not grow the table past its bound."""
    throttle, _ = make(limit=1)
    for i in range(100_050):
        throttle.fail(f"addr:{i}")
    assert len(throttle._failures) <= 100_000
    assert throttle.retry_after("addr:100049") == 60
