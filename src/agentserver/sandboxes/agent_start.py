"""Waiting for a starting agent to answer: a probe whenever it prints, on a backoff in between.

A starting opencode accepts connections a moment before it serves them, and a request sent in
that window is held unanswered (measured: over 10 s), so probing at a fixed interval lost up
to the probe's whole timeout on most starts. Here each probe runs on its own: one held by the
agent delays none after it, and the next starts as soon as the agent prints a line (opencode's
"server listening on …"), which is the event that it may now answer. Between lines the probes
follow a short backoff, as no event says that a port answers and an image may print nothing
when it is ready; each probe is bounded by its client's own timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

FIRST_DELAY = 0.05  # seconds between probes right after a start or a line of output
MOST_DELAY = 1.0  # the backoff's cap while the agent is quiet


async def until_answers(
    probe: Callable[[], Awaitable[bool]],
    output: trio.abc.ReceiveChannel[object],
    *,
    first: float = FIRST_DELAY,
    most: float = MOST_DELAY,
) -> bool:
    """True as soon as one `probe` says the agent answers; False when `output` (the agent's
    output as it comes) ends first, i.e. the agent stopped. A probe starts at once, on every
    item of output, and after `first` seconds of quiet, doubling up to `most`."""
    answered = False
    async with trio.open_nursery() as nursery:

        async def attempt() -> None:
            nonlocal answered
            if await probe():
                answered = True
                nursery.cancel_scope.cancel()

        async def kick() -> None:
            delay = first
            while True:
                nursery.start_soon(attempt)
                with trio.move_on_after(delay) as quiet:
                    try:
                        await output.receive()
                    except trio.EndOfChannel:
                        nursery.cancel_scope.cancel()
                        await trio.lowlevel.checkpoint()
                        return
                delay = min(delay * 2, most) if quiet.cancelled_caught else first

        nursery.start_soon(kick)
    return answered
