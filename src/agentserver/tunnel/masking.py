"""WebSocket masking in C for wsproto: the tunnel's largest per-byte cost in pure Python.

RFC 6455 makes a client XOR every payload byte it sends with a random 4-byte key, and the server
XOR it back. wsproto does this in Python (four strided `translate` passes, ~400 MB/s); on a bulk
download through the tunnel that was a third of the agent's CPU and a quarter of the server's.
`install()` swaps wsproto's masker for one built on `websockets.speedups.apply_mask` (C, many
GB/s). Same key, same bytes on the wire, same key rotation across partial frames: peers cannot
tell the difference. Without that extension (an unusual build), wsproto's own masker stays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import wsproto.frame_protocol

APPLY_MASK: Callable[[bytes | bytearray, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as APPLY_MASK
except ImportError:  # pragma: no cover - websockets ships the extension for our platforms
    APPLY_MASK = None

_PYTHON_MASKER: Final = wsproto.frame_protocol.XorMaskerSimple


class FastMasker:
    """wsproto's `XorMaskerSimple` interface: mask successive pieces of one frame's payload."""

    __slots__ = ("_key",)

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._key = bytes(masking_key)

    def process(self, data: bytes | bytearray) -> bytearray:
        if not data:
            return bytearray(data)
        assert APPLY_MASK is not None
        masked = bytearray(APPLY_MASK(data, self._key))
        # The next piece of the same frame continues where this one stopped in the key.
        turn = len(data) % 4
        self._key = self._key[turn:] + self._key[:turn]
        return masked


def install() -> bool:
    """Make every wsproto connection in this process mask with `FastMasker`; True if it did."""
    if APPLY_MASK is None:
        return False
    wsproto.frame_protocol.XorMaskerSimple = FastMasker  # type: ignore[misc, assignment]
    return True


def uninstall() -> None:
    """Back to wsproto's own masker (tests compare the two)."""
    wsproto.frame_protocol.XorMaskerSimple = _PYTHON_MASKER  # type: ignore[misc]
