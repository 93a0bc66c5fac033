"""The agent's heap: the large buffers a download churns through stay mapped between pieces.

Each piece of a body on its way through the agent (up to 256 KiB) passes through a few buffers
of about its size: the read from opencode, the tunnel message, the WebSocket's masked copy.
glibc's malloc serves blocks that large with mmap until a free raises its threshold, and hands
its heap's free top back to the kernel beyond twice that threshold; so a download kept mapping,
zero-filling and unmapping the same memory (5,000 to 10,000 page faults and about a sixth of the
agent's CPU per 100 MB, bench/bench_tunnel.py). Fixed thresholds keep such blocks in the heap,
at the price of up to `TRIM_THRESHOLD` bytes kept mapped while unused.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Final

MMAP_THRESHOLD: Final = 4 * 1024 * 1024  # blocks below this come from the heap
TRIM_THRESHOLD: Final = 16 * 1024 * 1024  # free heap top kept before it is handed back
_M_TRIM_THRESHOLD: Final = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD: Final = -3


def keep_large_buffers() -> bool:
    """Fix glibc malloc's thresholds for this process; False (nothing changed) elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
