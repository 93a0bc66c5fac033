"""Waiting for a starting agent (sandboxes/agent_start.py): probes on output and on a backoff,
in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.sandboxes.agent_start import until_answers


class Agent:
    """A stand-in agent's probe: records when each probe started (from `began`); the probes
    started while `hold` is set wait forever (as opencode holds requests just before it
    serves); they answer once `up` is set."""

    def __init__(self) -> None:
        self.began = trio.current_time()
        self.started: list[float] = []
        self.hold = False
        self.up = False

    def now(self) -> float:
        return trio.current_time() - self.began

    async def probe(self) -> bool:
        self.started.append(self.now())
        if self.hold:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return self.up


async def test_a_held_probe_delays_not_the_one_a_line_of_output_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe the agent holds unanswered does not hold up the wait: the line the agent prints
    when it serves starts a fresh probe, which answers at once."""
    agent = Agent()
    agent.hold = True
    send, output = trio.open_memory_channel[object](0)

    async def agent_starts() -> None:
        await trio.sleep(0.2)
        agent.hold, agent.up = False, True
        await send.send(b"opencode server listening on http://0.0.0.0:4096\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent_starts)
        assert await until_answers(agent.probe, output, first=1.0, most=1.0)
        assert agent.now() == pytest.approx(0.2)
        assert agent.started == pytest.approx([0.0, 0.2])
        nursery.cancel_scope.cancel()


async def test_the_end_of_output_means_the_agent_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the agent's output ends (it exited) before any probe answers, the wait says so at
    once instead of probing on."""
    agent = Agent()
    send, output = trio.open_memory_channel[object](0)

    async def agent_exits() -> None:
        await trio.sleep(0.3)
        await send.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent_exits)
        assert not await until_answers(agent.probe, output, first=0.05, most=1.0)
        assert agent.now() == pytest.approx(0.3)


async def test_quiet_agents_are_probed_on_a_doubling_backoff_reset_by_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the agent prints nothing the probes follow the backoff (first, doubling, capped);
    a line of output starts a probe and the backoff over."""
    agent = Agent()
    send, output = trio.open_memory_channel[object](0)

    async def agent_prints_then_serves() -> None:
        await trio.sleep(2.0)
        await send.send(b"a line\n")
        await trio.sleep(0.25)
        agent.up = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent_prints_then_serves)
        assert await until_answers(agent.probe, output, first=0.1, most=0.4)
        nursery.cancel_scope.cancel()
    quiet = [0.0, 0.1, 0.3, 0.7, 1.1, 1.5, 1.9]  # +0.1, +0.2, +0.4, then capped
    after_line = [2.0, 2.1, 2.3]  # the line's probe, then the backoff from its start
    assert agent.started == pytest.approx(quiet + after_line)


async def test_a_ready_agent_answers_the_first_probe_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An agent already serving (a start redone) is ready at the first probe, sent at once."""
    agent = Agent()
    agent.up = True
    send, output = trio.open_memory_channel[object](0)
    with send:
        assert await until_answers(agent.probe, output)
    assert agent.started == [0.0]
    assert agent.now() == 0.0
