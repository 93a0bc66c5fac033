"""Moving a sized response body from the agent's socket to the browser's without copying it
through Python: splice(2) through a pipe, the way HAProxy forwards bulk data.

A read-and-write relay copies every byte into and out of the process, and on a small machine
those copies, not the proxy's logic, cap a download. With splice the kernel moves the pages;
the proxy only waits for readiness. Linux only: `available` is False elsewhere and callers
use the ordinary relay.

Waiting is what is left to cost: a large body stalls a few hundred times (whenever the agent
or the browser is the slower side), and each stall on trio's event loop costs tens of
microseconds of Python, half of the proxy's CPU for a download. So a body larger than a pipe
moves on a worker thread of its own that waits with poll(2) on the two sockets and a wake-up
pipe, and drains the browser side while refilling from the agent. The awaiting task owns that
thread: a cancel writes to the wake-up pipe and the task returns only once the thread has
stopped touching the sockets. A few threads at most (`THREADS`); past that, bodies take the
event-loop path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import termios
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio

from agentserver.errors import SandboxUnreachable

if TYPE_CHECKING:
    import outcome  # trio's own type for a result that may be an exception

available = hasattr(os, "splice")
PIPE_SIZE = 1 << 20
THREAD_FROM = PIPE_SIZE  # bodies at least this large move on a worker thread
THREADS = 32  # at most this many at once
# On a thread, wake for the agent's bytes a MiB at a time (SO_RCVLOWAT): fewer, larger moves
# cost less per byte for every process involved (bench: 0.58x -> 0.72x of direct)...
BATCH = 1 << 20
# ...but never hold bytes that have arrived for longer than this, in milliseconds.
BATCH_WAIT_MS = 2
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("splice_threads")


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    # Above /proc/sys/fs/pipe-max-size this fails, and the default 64 KiB still works.
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


def _threads() -> trio.CapacityLimiter:
    try:
        return _limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(THREADS)
        _limiter.set(limiter)
        return limiter


@contextlib.contextmanager
def _thread_slot() -> Iterator[bool]:
    """One of the THREADS worker-thread slots if one is free now (True), never waiting."""
    limiter, borrower = _threads(), object()
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        yield False
        return
    try:
        yield True
    finally:
        limiter.release_on_behalf_of(borrower)


async def splice(source: trio.SocketStream, sink: trio.SocketStream, count: int) -> None:
    """Move exactly `count` bytes from `source` to `sink`.

    Raises SandboxUnreachable when the source fails or ends early, trio.BrokenResourceError
    when the sink (the browser) goes away.
    """
    read_end, write_end = _pipe()
    slot = _thread_slot() if count >= THREAD_FROM else contextlib.nullcontext(False)
    try:
        with slot as on_thread:
            if on_thread:
                dst = sink.socket.fileno()
                await _pump_on_thread(source.socket, dst, count, read_end, write_end)
            else:
                await _pump(source, sink, count, read_end, write_end)
    finally:
        os.close(read_end)
        os.close(write_end)


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, count: int, read_end: int, write_end: int
) -> None:
    # Alternate: fill the pipe from the agent, then drain it into the browser. Each phase
    # moves up to a pipe's worth; a checkpoint per round keeps other tasks running.
    src, dst = source.socket.fileno(), sink.socket.fileno()
    await trio.lowlevel.checkpoint_if_cancelled()
    while count:
        await trio.lowlevel.checkpoint()
        in_pipe = 0
        while not in_pipe:
            try:
                in_pipe = _fill(src, write_end, min(count, PIPE_SIZE))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(source.socket)
        count -= in_pipe
        while in_pipe:
            try:
                in_pipe -= _drain(read_end, dst, in_pipe)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sink.socket)


def _fill(src: int, write_end: int, most: int) -> int:
    """Agent socket → pipe: the bytes moved (BlockingIOError when there are none yet)."""
    try:
        moved = os.splice(src, write_end, most, flags=_FLAGS)
    except BlockingIOError:
        raise
    except OSError as exc:
        raise SandboxUnreachable(f"reading from the sandbox failed: {exc.strerror}") from None
    if not moved:
        raise SandboxUnreachable("the sandbox closed the response early")
    return moved


def _drain(read_end: int, dst: int, most: int) -> int:
    """Pipe → browser socket: the bytes moved (BlockingIOError when it takes none now).

    Never with SPLICE_F_MORE: that corks a partial segment until more data comes, so the
    bytes an agent sends just before it pauses would sit in our socket (~200 ms, measured).
    """
    try:
        return os.splice(read_end, dst, most, flags=_FLAGS)
    except BlockingIOError:
        raise
    except OSError as exc:
        raise trio.BrokenResourceError(f"the browser went away: {exc.strerror}") from None


async def _pump_on_thread(
    source: trio.socket.SocketType, dst: int, count: int, read_end: int, write_end: int
) -> None:
    """`_pump_blocking` on a worker thread that this task owns until it has stopped."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        finished = await _run_on_thread(
            lambda: _pump_blocking(source, dst, count, read_end, write_end, wake_r), wake_w
        )
        if not finished:  # woken by a cancel: deliver it here
            await trio.lowlevel.checkpoint()
            raise RuntimeError("the splice thread stopped without a cancel")  # pragma: no cover
    finally:
        os.close(wake_r)
        os.close(wake_w)


async def _run_on_thread(work: Callable[[], bool], wake_w: int) -> bool:
    """Run `work` on a thread and wait for it; a cancel wakes it through `wake_w` and is
    only delivered after it has returned (so the sockets are never used after we return)."""
    task, token = trio.lowlevel.current_task(), trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[bool]) -> None:  # on the worker thread
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        os.write(wake_w, b"\0")
        return trio.lowlevel.Abort.FAILED  # keep waiting: the thread reports when it stops

    trio.lowlevel.start_thread_soon(work, deliver, name="agentserver splice")
    result: bool = await trio.lowlevel.wait_task_rescheduled(abort)
    return result


def _pump_blocking(
    source: trio.socket.SocketType,
    dst: int,
    count: int,
    read_end: int,
    write_end: int,
    wake_r: int,
) -> bool:
    """Move `count` bytes, refilling the pipe from the agent while the browser drains it.

    Runs on a worker thread; returns False if woken through `wake_r` before the end. The
    agent's socket gets a low-water mark while this runs, and its default back at the end.
    """
    src = source.fileno()
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    in_pipe = 0
    lowat = 1
    try:
        while count or in_pipe:
            wait_for: tuple[int, int] | None = None
            room = min(count, PIPE_SIZE - in_pipe)
            if room > 0:
                try:
                    moved = _fill(src, write_end, room)
                    count -= moved
                    in_pipe += moved
                except BlockingIOError:
                    if not in_pipe:
                        wait_for = (src, select.POLLIN)
            if in_pipe:
                try:
                    in_pipe -= _drain(read_end, dst, in_pipe)
                    continue
                except BlockingIOError:
                    wait_for = (dst, select.POLLOUT)
            if wait_for is None:
                continue
            timeout = None
            if wait_for[0] == src:
                if lowat != min(BATCH, count):
                    lowat = min(BATCH, count)
                    source.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                timeout = BATCH_WAIT_MS if lowat > 1 else None
            ready = _wait(poller, *wait_for, wake_r, timeout)
            if ready is None and not _unread(src):
                # A batch did not come in time and nothing has: the agent is pausing, so wait
                # for its next byte (the batch mark comes back once it sends again).
                lowat = 1
                source.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            elif ready is False:
                return False
        return True
    finally:
        if lowat != 1:  # the pooled connection goes back as it came
            with contextlib.suppress(OSError):
                source.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _unread(fd: int) -> int:
    """Bytes waiting in a socket's receive queue."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _wait(
    poller: select.poll, fd: int, event: int, wake_r: int, timeout_ms: int | None
) -> bool | None:
    """Block until `fd` is ready for `event` (or failed, which the next splice reports): True;
    False when woken through `wake_r` instead; None when `timeout_ms` passed first."""
    poller.register(fd, event)
    try:
        ready = poller.poll(timeout_ms)
    finally:
        poller.unregister(fd)
    if any(ready_fd == wake_r for ready_fd, _ in ready):
        return False
    return True if ready else None
