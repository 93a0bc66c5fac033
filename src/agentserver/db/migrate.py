"""Forward-only migrations from `sql/migrations`, applied once each under an advisory lock."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg

from agentserver.db.paths import sql_dir
from agentserver.errors import DatabaseUnavailable, MigrationFailed

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every agentserver process.
_LOCK_KEY = 0x61_67_73_76  # "agsv"


def migration_files(directory: Path | None = None) -> list[Path]:
    return sorted((directory or sql_dir() / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def apply_migrations(url: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations in order (blocking); returns the versions applied now.

    Raises DatabaseUnavailable when the database cannot be reached, MigrationFailed (naming the
    file; nothing of it stays applied) when a migration's SQL fails.
    """
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {_first_line(exc)}") from None
    with conn:
        # Session-level lock: a second server waits here, then sees everything already applied.
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            return _apply_pending(conn, directory)
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _apply_pending(conn: psycopg.Connection[Any], directory: Path | None) -> list[str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied_now: list[str] = []
    for path in migration_files(directory):
        if path.stem in done:
            continue
        try:
            with conn.transaction():
                conn.execute(path.read_text().encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
        except psycopg.Error as exc:
            raise MigrationFailed(f"migration {path.name} failed: {_first_line(exc)}") from exc
        log.info("applied migration %s", path.stem)
        applied_now.append(path.stem)
    return applied_now
