"""The agent's reconnect policy: quick after a server restart, patient when never connected,
and every status line in words."""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from agentserver.agent.connect import (
    IMMEDIATE_EVERY,
    RESTART_CAP,
    RESTART_TRIES,
    AgentConfig,
    AgentError,
    Backoff,
    Session,
    describe,
)
from agentserver.agent.forward import Forwarder
from agentserver.tunnel.handshake import HandshakeError, Refused

CONFIG = AgentConfig(
    server="http://127.0.0.1:8080",
    sandboxId="abc123",
    tunnelToken="tok",
    workspaceId="w1",
    name="laptop",
)
REFUSED = OSError(errno.ECONNREFUSED, "Connection refused")
Step = Callable[["ScriptedSession"], None]


def up(going_away: str | None) -> Step:
    """A connection that came up, then ended (with the server's go-away message, if any)."""

    def step(session: ScriptedSession) -> None:
        session.connections += 1
        session.tunnel = SimpleNamespace(peer_going_away=going_away)  # type: ignore[assignment]

    return step


def fail(exc: BaseException) -> Step:
    def step(session: ScriptedSession) -> None:
        raise exc

    return step


class Connected(Exception):
    """The script's end: the agent is connected again."""


class ScriptedSession(Session):
    """A session whose connection attempts follow a script, timed on the virtual clock."""

    def __init__(self, steps: list[Step]) -> None:
        self.lines: list[str] = []
        super().__init__(
            CONFIG,
            Forwarder("http://127.0.0.1:4096", None, self.lines.append),
            self.lines.append,
            backoff=Backoff(rng=random.Random(3)),
        )
        self.steps: Iterator[Step] = iter(steps)
        self.attempts: list[float] = []
        self.waits: list[float] = []
        self.wait = self.record_wait

    async def record_wait(self, delay: float) -> None:
        self.waits.append(delay)
        await trio.sleep(delay)

    async def connect_once(self) -> None:
        self.attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        step = next(self.steps, None)
        if step is None:
            raise Connected
        step(self)


async def run_script(steps: list[Step]) -> ScriptedSession:
    session = ScriptedSession(steps)
    with pytest.raises(Connected):
        await session.run()
    return session


def test_a_lost_connection_caps_the_waits_for_a_while_then_doubles_again() -> None:
    """After `lost()` the waits start from 1 s and stay under the restart cap for its tries;
    then they double to the 60 s cap as before."""
    backoff = Backoff(rng=random.Random(1))
    for _ in range(10):
        backoff.next()
    assert backoff.ceiling() == 60
    backoff.lost()
    ceilings = []
    for _ in range(RESTART_TRIES):
        ceilings.append(backoff.ceiling())
        assert backoff.next() <= ceilings[-1]
    assert ceilings[:3] == [1, 2, RESTART_CAP]
    assert max(ceilings) == RESTART_CAP
    assert backoff.ceiling() == 60  # 2 ** RESTART_TRIES s, capped: the patient policy again


def test_refused_connects_without_a_connection_back_off_to_a_minute() -> None:
    """An agent that never got through (server down for good) is not hurried: 1, 2, 4 … 60 s."""
    backoff = Backoff(rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        backoff.next()
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_a_go_away_reconnects_within_seconds_through_refused_connects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server restart (go-away, then refused connects for a while) after a minute of failures
    costs the agent seconds, not a minute, and it says so in words."""
    steps = [fail(REFUSED)] * 8 + [up(None)] + [up("server restarting")] + [fail(REFUSED)] * 6
    session = await run_script(steps)
    restart = session.attempts[9]  # the go-away arrived at the end of this attempt
    gaps = [b - a for a, b in zip(session.attempts[9:], session.attempts[10:], strict=False)]
    assert max(gaps) <= RESTART_CAP
    assert session.attempts[-1] - restart < 7 * RESTART_CAP
    assert any("server restarting, reconnecting now" in line for line in session.lines)
    refused = "server unreachable at http://127.0.0.1:8080: connection refused, reconnecting in"
    assert sum(refused in line for line in session.lines) == 14


async def test_a_healthy_connection_that_breaks_resets_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection that was up and broke (no go-away) starts again from 1 s, whatever came
    before, and the line says the connection was lost."""
    steps = [fail(REFUSED)] * 7 + [up(None)]
    session = await run_script(steps)
    assert session.attempts[-1] - session.attempts[-2] <= 1.0
    assert "connection to the server lost" in session.lines[-2]


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (Refused(503, [], b""), "not ready (HTTP 503): restarting?"),
        (HandshakeError(), "closed the connection before the tunnel opened"),
        (trio.TooSlowError(), "server unreachable at http://s: no answer in time"),
        (REFUSED, "server unreachable at http://s: connection refused"),
    ],
)
def test_failures_are_described_in_words(exc: BaseException, words: str) -> None:
    """No status line is a bare exception class name."""
    text = describe(exc, "http://s")
    assert words in text
    assert type(exc).__name__ not in text


async def test_a_refused_token_stops_with_what_to_do() -> None:
    """HTTP 401 on the upgrade stops the agent with "token revoked: register again"."""
    session = ScriptedSession([fail(Refused(401, [], b""))])
    with pytest.raises(AgentError) as stopped:
        await session.run()
    assert stopped.value.message.startswith("token revoked: register again with a new code")


async def test_a_server_restarting_go_away_reconnects_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the go-away "server restarting" the next attempt starts at once: no backoff wait."""
    session = await run_script([up("server restarting")])
    assert session.waits == []
    assert session.immediate_reconnects == 1
    assert session.attempts[1] == session.attempts[0]


async def test_a_draining_refusal_after_a_go_away_falls_back_to_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The immediate reconnect refused with 503 (the replica drains) waits as any refusal does."""
    draining = Refused(503, [], b"")
    session = await run_script([up("server restarting"), fail(draining)])
    assert session.immediate_reconnects == 1
    assert len(session.waits) == 1
    assert "not ready (HTTP 503)" in session.lines[-2]
    assert session.waits[0] <= RESTART_CAP


async def test_go_aways_in_quick_succession_wait_after_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server saying "restarting" again within IMMEDIATE_EVERY gets a backoff wait, so a
    confused server cannot make the agent spin."""
    session = await run_script([up("server restarting"), up("server restarting")])
    assert session.immediate_reconnects == 1
    assert len(session.waits) == 1
    assert session.attempts[1] - session.attempts[0] < IMMEDIATE_EVERY


async def test_another_go_away_reason_waits_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only a server that stops is reconnected to at once; a tunnel closed for another reason
    (replaced by a newer tunnel of the same sandbox) waits, so two agents do not ping-pong."""
    session = await run_script([up("replaced by a newer tunnel")])
    assert session.immediate_reconnects == 0
    assert len(session.waits) == 1
