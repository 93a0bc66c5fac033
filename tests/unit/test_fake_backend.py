"""The in-memory FakeBackend: virtual-time delays, gates, injected failures, the call record."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.errors import BackendError
from agentserver.models import SandboxType
from agentserver.sandboxes.base import Managed, SandboxSpec
from agentserver.sandboxes.fake import Call, FakeBackend


def spec(sandbox_id: str = "sb1") -> SandboxSpec:
    return SandboxSpec(sandbox_id, "ws1", SandboxType.OPENCODE, "secret", "http://llm", "token")


async def test_delays_pass_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    """A create delayed by an hour takes an hour of trio time (and none of the wall clock)."""
    backend = FakeBackend()
    backend.delay("create", 3600)
    start = trio.current_time()
    await backend.create(spec())
    assert trio.current_time() - start == pytest.approx(3600)
    assert backend.running("sb1")


async def test_a_gate_holds_an_operation_until_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A gated pause waits (however long) until the test releases it, then acts."""
    backend = FakeBackend()
    await backend.create(spec())
    gate = backend.gate("pause")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.pause, "sb1")
        await gate.arrived()
        await trio.sleep(1000)
        assert gate.waiting == 1
        assert backend.running("sb1")
        gate.release()
    assert not backend.running("sb1")
    assert gate.waiting == 0


async def test_fail_next_fails_one_call_and_changes_nothing() -> None:
    """An injected failure is raised by the next call of that operation only, which leaves
    the sandbox as it was; the one after acts."""
    backend = FakeBackend()
    await backend.create(spec())
    backend.fail_next("pause", BackendError("the disk is gone"))
    with pytest.raises(BackendError, match="the disk is gone"):
        await backend.pause("sb1")
    assert backend.running("sb1")
    await backend.pause("sb1")
    assert not backend.running("sb1")


async def test_calls_are_recorded_and_resume_moves_the_address() -> None:
    """Every call is recorded in order; a resumed sandbox answers at a new endpoint and is
    listed as running there; destroy removes it, and a missing one is no error."""
    backend = FakeBackend()
    first = await backend.create(spec())
    await backend.pause("sb1")
    assert await backend.list_managed() == [Managed("sb1", False, None)]
    second = await backend.resume(spec())
    assert second != first
    assert await backend.list_managed() == [Managed("sb1", True, second)]
    await backend.destroy("sb1")
    await backend.destroy("sb1")
    assert await backend.list_managed() == []
    assert [c.op for c in backend.calls] == [
        "create",
        "pause",
        "list_managed",
        "resume",
        "list_managed",
        "destroy",
        "destroy",
        "list_managed",
    ]
    assert backend.calls[0] == Call("create", "sb1")


async def test_crash_stops_the_sandbox_and_tells_on_exit() -> None:
    """`crash` stops the sandbox and reports it through `on_exit`, as a supervisor would."""
    heard: list[tuple[str, str]] = []

    async def on_exit(sandbox_id: str, reason: str) -> None:
        heard.append((sandbox_id, reason))
        await trio.lowlevel.checkpoint()

    backend = FakeBackend(on_exit=on_exit)
    await backend.create(spec())
    await backend.crash("sb1", "exit status 137")
    assert not backend.running("sb1")
    assert heard == [("sb1", "exit status 137")]
