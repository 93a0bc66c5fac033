"""Leader duties: run while this replica leads, cancelled the moment it stops leading."""

from __future__ import annotations

import trio
import trio.testing

from agentserver.cluster.leader import Leader


class Duty:
    """A leader-only loop that counts its starts and notes when it was cancelled."""

    def __init__(self) -> None:
        self.starts = 0
        self.cancelled = 0
        self.running = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        self.running = True
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.running = False
            self.cancelled += 1


async def test_a_duty_runs_only_while_leading_and_again_each_term() -> None:
    """Not leading: the duty waits; leading: it runs; leadership lost: it is cancelled at once;
    leading again: it starts anew."""
    leader = Leader("postgresql://unused")
    duty = Duty()
    async with trio.open_nursery() as nursery:
        await nursery.start(leader.while_leading, "duty", duty.run)
        await trio.testing.wait_all_tasks_blocked()
        assert duty.starts == 0
        leader._on_change(True)
        await trio.testing.wait_all_tasks_blocked()
        assert duty.running
        assert leader.terms == 1
        leader._on_change(False)
        await trio.testing.wait_all_tasks_blocked()
        assert not duty.running
        assert duty.cancelled == 1
        leader._on_change(True)
        await trio.testing.wait_all_tasks_blocked()
        assert duty.running
        assert duty.starts == 2
        assert leader.terms == 2
        nursery.cancel_scope.cancel()


async def test_waiting_for_leadership_returns_at_once_when_already_leading() -> None:
    """`wait_leading` returns at once for a leader, `wait_following` for a follower."""
    leader = Leader("postgresql://unused")
    with trio.fail_after(1):
        await leader.wait_following()
        leader._on_change(True)
        await leader.wait_leading()
