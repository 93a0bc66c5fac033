"""Per-account pacing: an account under attack is slowed down one attempt at a time, never shut."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.auth.pacing import AccountPacer
from agentserver.auth.throttle import MemoryCounts
from agentserver.errors import RateLimited


async def test_an_account_without_failures_is_not_paced(autojump_clock: trio.abc.Clock) -> None:
    """Below the failure limit an attempt starts at once."""
    pacer = AccountPacer(limit=2, delay=5.0)
    await pacer.fail("user:a")
    start = trio.current_time()
    async with pacer.turn("user:a"):
        assert trio.current_time() == start


async def test_paced_attempts_wait_and_take_turns(autojump_clock: trio.abc.Clock) -> None:
    """Past the limit each attempt waits `delay` and runs alone, so N attempts take N delays."""
    pacer = AccountPacer(limit=2, delay=5.0, max_waiting=4)
    await pacer.fail("user:a")
    await pacer.fail("user:a")
    inside = 0
    most = 0
    finished: list[float] = []
    start = trio.current_time()

    async def attempt() -> None:
        nonlocal inside, most
        async with pacer.turn("user:a"):
            inside += 1
            most = max(most, inside)
            await trio.sleep(1.0)  # the password check itself, in virtual time
            inside -= 1
        finished.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(attempt)
    assert most == 1
    assert finished == [6.0, 12.0, 18.0]
    assert pacer._turns == {}  # nothing remembered once the queue is empty


async def test_a_full_queue_is_refused_not_grown(autojump_clock: trio.abc.Clock) -> None:
    """With max_waiting attempts already queued, the next one is refused with a Retry-After."""
    pacer = AccountPacer(limit=1, delay=5.0, max_waiting=2)
    await pacer.fail("user:a")
    refused: list[RateLimited] = []

    async def attempt() -> None:
        try:
            async with pacer.turn("user:a"):
                await trio.sleep(1.0)
        except RateLimited as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(4):  # one runs, two wait, the fourth is refused
            nursery.start_soon(attempt)
            await trio.testing.wait_all_tasks_blocked()
    assert len(refused) == 1
    assert refused[0].retry_after >= 5


async def test_other_accounts_are_not_slowed(autojump_clock: trio.abc.Clock) -> None:
    """Pacing one account leaves every other account's attempts immediate."""
    pacer = AccountPacer(limit=1, delay=5.0)
    await pacer.fail("user:a")
    start = trio.current_time()
    async with pacer.turn("user:b"):
        assert trio.current_time() == start


async def test_a_correct_password_ends_pacing() -> None:
    """reset() clears the account's failures: its next attempt is not paced."""
    pacer = AccountPacer(limit=1, delay=5.0)
    await pacer.fail("user:a")
    assert await pacer.paced("user:a")
    await pacer.reset("user:a")
    assert not await pacer.paced("user:a")


@pytest.mark.parametrize("count", [0, 1])
async def test_pacing_starts_at_the_limit(count: int) -> None:
    """Exactly `limit` failures switch pacing on; fewer do not."""
    pacer = AccountPacer(limit=2, delay=5.0)
    for _ in range(count + 1):
        await pacer.fail("user:a")
    assert await pacer.paced("user:a") == (count + 1 >= 2)


async def test_pacers_sharing_counts_take_turns_across_replicas(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two replicas' pacers over one store: paced attempts start a delay apart across both, as
    on one replica, instead of each replica pacing its own attempts."""
    shared = MemoryCounts(trio.current_time)
    pacers = [AccountPacer(limit=1, delay=5.0, counts=shared) for _ in range(2)]
    await pacers[0].fail("user:a")
    started: list[float] = []
    start = trio.current_time()

    async def attempt(pacer: AccountPacer) -> None:
        async with pacer.turn("user:a"):
            started.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(attempt, pacers[i % 2])
    assert sorted(started) == [5.0, 10.0, 15.0, 20.0]


async def test_a_full_queue_across_replicas_is_refused(autojump_clock: trio.abc.Clock) -> None:
    """Attempts queued on other replicas count toward the bound: past it one is refused."""
    shared = MemoryCounts(trio.current_time)
    pacers = [AccountPacer(limit=1, delay=5.0, max_waiting=1, counts=shared) for _ in range(3)]
    await pacers[0].fail("user:a")
    outcomes: list[str] = []
    refused: list[RateLimited] = []

    async def attempt(pacer: AccountPacer) -> None:
        try:
            async with pacer.turn("user:a"):
                outcomes.append("ran")
        except RateLimited as exc:
            refused.append(exc)
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for pacer in pacers:  # one turn each; the third would start 15 s out, past 2 delays
            nursery.start_soon(attempt, pacer)
            await trio.testing.wait_all_tasks_blocked()
    assert sorted(outcomes) == ["ran", "ran", "refused"]
    assert refused[0].retry_after >= 10
