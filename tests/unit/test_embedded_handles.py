"""pgserver's list of PostgreSQL's users is cleared of processes that died (db/embedded.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agentserver.db.embedded import HANDLES, forget_dead_users


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_dead_processes_are_dropped_and_live_ones_kept(tmp_path: Path) -> None:
    """A killed server's pid leaves the list; a running process's stays, in order."""
    gone = dead_pid()
    (tmp_path / HANDLES).write_text(json.dumps([gone, os.getpid()]))
    assert forget_dead_users(tmp_path) == [gone]
    assert json.loads((tmp_path / HANDLES).read_text()) == [os.getpid()]


def test_no_list_is_nothing_to_do(tmp_path: Path) -> None:
    """A data directory PostgreSQL never ran in has no list, and gets none."""
    assert forget_dead_users(tmp_path) == []
    assert not (tmp_path / HANDLES).exists()


def test_an_unreadable_list_is_emptied(tmp_path: Path) -> None:
    """A list that is not JSON numbers counts nobody: the next exit stops PostgreSQL."""
    (tmp_path / HANDLES).write_text("{not json")
    assert forget_dead_users(tmp_path) == []
    assert json.loads((tmp_path / HANDLES).read_text()) == []
