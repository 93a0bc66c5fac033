"""The sandbox process-tree helpers: finding descendants and waiting for them to exit."""

from __future__ import annotations

import os
import signal

import trio

from agentserver.sandboxes.proctree import descendants, open_pidfds, wait_gone


async def test_descendants_are_found_and_waited_for_until_they_exit() -> None:
    """Grandchildren in another session are found, and wait_gone returns once they are killed."""
    parent = await trio.lowlevel.open_process(
        ["sh", "-c", "setsid sleep 60 & sleep 60 & wait"], start_new_session=True
    )
    try:
        with trio.fail_after(10):
            while len(descendants(parent.pid)) < 2:  # no event marks a fork: poll /proc
                await trio.sleep(0.01)
        tree = descendants(parent.pid)
        fds = open_pidfds(tree)
        assert len(fds) == len(tree) >= 2
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        with trio.fail_after(10):
            await wait_gone(fds)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        await parent.wait()


async def test_wait_gone_blocks_while_a_process_lives() -> None:
    """wait_gone does not return while a tracked process is still running."""
    child = await trio.lowlevel.open_process(["sleep", "60"])
    try:
        fds = open_pidfds([child.pid])
        with trio.move_on_after(0.2) as scope:
            await wait_gone(fds)
        assert scope.cancelled_caught
    finally:
        child.kill()
        await child.wait()
