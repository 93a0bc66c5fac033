"""Moving a sized response body from the agent's socket to the browser's without copying it
through Python: splice(2) through a pipe, the way HAProxy forwards bulk data.

A read-and-write relay copies every byte into and out of the process, and on a small machine
those copies, not the proxy's logic, cap a download. With splice the kernel moves the pages;
the proxy only waits for readiness. Linux only: `available` is False elsewhere and callers
use the ordinary relay.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

import trio

from agentserver.errors import SandboxUnreachable

available = hasattr(os, "splice")
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_MORE = getattr(os, "SPLICE_F_MORE", 4)


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    # Above /proc/sys/fs/pipe-max-size this fails, and the default 64 KiB still works.
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


async def splice(source: trio.SocketStream, sink: trio.SocketStream, count: int) -> None:
    """Move exactly `count` bytes from `source` to `sink`.

    Raises SandboxUnreachable when the source fails or ends early, trio.BrokenResourceError
    when the sink (the browser) goes away.
    """
    read_end, write_end = _pipe()
    try:
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
                in_pipe = os.splice(src, write_end, min(count, PIPE_SIZE), flags=_FLAGS)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(source.socket)
                continue
            except OSError as exc:
                raise SandboxUnreachable(
                    f"reading from the sandbox failed: {exc.strerror}"
                ) from None
            if not in_pipe:
                raise SandboxUnreachable("the sandbox closed the response early")
        count -= in_pipe
        while in_pipe:
            try:
                in_pipe -= os.splice(read_end, dst, in_pipe, flags=_FLAGS | (_MORE if count else 0))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sink.socket)
            except OSError as exc:
                raise trio.BrokenResourceError(f"the browser went away: {exc.strerror}") from None
