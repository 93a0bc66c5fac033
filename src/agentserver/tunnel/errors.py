"""What a tunnel raises to its users: the tunnel is gone, or one stream was reset."""

from __future__ import annotations

import trio


class TunnelClosed(trio.BrokenResourceError):
    """The tunnel is gone (closed, broken link, dead peer); every open stream fails with this."""


class StreamResetError(trio.BrokenResourceError):
    """The stream was reset: by the peer (`remote`) or by us because the peer broke its rules."""

    def __init__(self, code: str, message: str, *, remote: bool) -> None:
        super().__init__(
            f"stream reset ({code}): {message}" if message else f"stream reset ({code})"
        )
        self.code, self.message, self.remote = code, message, remote
