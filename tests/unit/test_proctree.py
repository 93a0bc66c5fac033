"""The sandbox process-tree helpers: descendants, waiting for exits, sweeping leftover agents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

import trio

from agentserver.sandboxes.proctree import (
    PID_FILE,
    descendants,
    open_pidfds,
    record,
    sweep,
    wait_gone,
)
from tests.support.sandboxes import alive


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


async def spawn_tree() -> tuple[trio.Process, list[int]]:
    """A session leader with a child in its group, as an agent started by an earlier run; it
    prints the child's pid once it has forked it."""
    leader = await trio.lowlevel.open_process(
        ["sh", "-c", "sleep 60 >/dev/null & echo $!; exec 1>&-; wait"],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert leader.stdout is not None
    line = b""
    with trio.fail_after(10):
        while not line.endswith(b"\n"):
            chunk = await leader.stdout.receive_some()
            assert chunk, "the shell exited before starting its child"
            line += chunk
    await leader.stdout.aclose()
    return leader, [int(line)]


async def test_sweep_kills_a_recorded_agent_and_its_children(tmp_path: Path) -> None:
    """A pid file naming a process that still runs gets it and its descendants killed."""
    leader, children = await spawn_tree()
    try:
        record(tmp_path, leader.pid)
        with trio.fail_after(10):
            await wait_gone(sweep(tmp_path))
        assert not any(alive(pid) for pid in [leader.pid, *children])
        assert not (tmp_path / PID_FILE).exists()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        await leader.wait()


async def test_sweep_spares_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    """A pid file whose start time differs from the live process's names someone else: spared."""
    other = await trio.lowlevel.open_process(["sleep", "60"], start_new_session=True)
    try:
        record(tmp_path, other.pid)
        text = json.loads((tmp_path / PID_FILE).read_text())
        text["start"] -= 1  # the recorded agent started earlier: this is another program
        (tmp_path / PID_FILE).write_text(json.dumps(text))
        assert sweep(tmp_path) == []
        assert alive(other.pid)
        assert not (tmp_path / PID_FILE).exists()
    finally:
        other.kill()
        await other.wait()


async def test_sweep_kills_the_group_an_exited_agent_left(tmp_path: Path) -> None:
    """When the recorded agent is gone but members of its process group live on, they are killed."""
    leader, children = await spawn_tree()
    record(tmp_path, leader.pid)
    os.kill(leader.pid, signal.SIGKILL)
    await leader.wait()  # reaped: its pid no longer names a process, its group lives on
    try:
        assert all(alive(pid) for pid in children)
        with trio.fail_after(10):
            await wait_gone(sweep(tmp_path))
        assert not any(alive(pid) for pid in children)
    finally:
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_missing_or_garbled_pid_file_is_nothing_to_sweep(tmp_path: Path) -> None:
    """No pid file, or one that is not ours to parse, kills nothing and is removed."""
    assert sweep(tmp_path) == []
    (tmp_path / PID_FILE).write_text("not json")
    assert sweep(tmp_path) == []
    assert not (tmp_path / PID_FILE).exists()
