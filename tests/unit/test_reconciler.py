"""The periodic reconciler loop, on virtual time: passes every interval, at once when poked."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.errors import DatabaseUnavailable
from agentserver.sandboxes.reconciler import Reconciler


class FakeSandboxes:
    """Records when `reconcile` runs; raises the scripted errors in turn."""

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    async def reconcile(self, *, at_start: bool = False) -> None:
        assert not at_start
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error


async def test_passes_come_every_interval_and_survive_a_failed_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first pass comes one interval after start, then one every interval; a pass that
    fails for want of the database is logged and the next one still comes on time."""
    fake = FakeSandboxes(None, DatabaseUnavailable("down"), None)
    reconciler = Reconciler(fake, 60.0)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(reconciler.run)
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert [round(t - start, 3) for t in fake.calls] == [60.0, 120.0, 180.0]
    assert reconciler.passes == 3


async def test_poke_runs_a_pass_now_and_next_pass_waits_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`poke` starts a pass at once; `next_pass` returns once a pass begun after it is done."""
    fake = FakeSandboxes()
    reconciler = Reconciler(fake, 60.0)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(reconciler.run)
        await trio.sleep(5)
        reconciler.poke()
        await reconciler.next_pass()
        assert [round(t - start, 3) for t in fake.calls] == [5.0]
        assert reconciler.passes == 1
        nursery.cancel_scope.cancel()


def test_a_zero_interval_is_refused() -> None:
    """0 means "only at start": the feature starts no reconciler, and the class refuses one."""
    with pytest.raises(ValueError, match="positive"):
        Reconciler(FakeSandboxes(), 0)
