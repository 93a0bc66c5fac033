"""Tests for the agent's heap tuning (agent/heap.py): large buffers freed and allocated again,
as a download's pieces are, stop costing page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHURN = """
import resource, sys
from agentserver.agent import heap
if sys.argv[1] == "tuned":
    assert heap.keep_large_buffers()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):  # a download's pieces: a few buffers of ~256 KiB at once, then freed
    pieces = [bytearray(300_000) for _ in range(4)]
    del pieces
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_large_buffers_churned_fault_no_pages_once_kept() -> None:
    """With the thresholds fixed, buffers of a piece's size are reused from the heap; without,
    the same churn faults their pages in again and again."""
    untouched, tuned = _faults("untouched"), _faults("tuned")
    assert tuned * 20 < untouched
