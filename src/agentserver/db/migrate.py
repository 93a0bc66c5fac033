"""Forward-only migrations from `sql/migrations`, applied once each under an advisory lock."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg

from agentserver.db.paths import sql_dir

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every agentserver process.
_LOCK_KEY = 0x61_67_73_76  # "agsv"


def migration_files(directory: Path | None = None) -> list[Path]:
    return sorted((directory or sql_dir() / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))


def apply_migrations(url: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations in order (blocking); returns the versions applied now."""
    applied_now: list[str] = []
    conn: psycopg.Connection[Any]
    with psycopg.connect(url, autocommit=True) as conn:
        # Session-level lock: a second server waits here, then sees everything already applied.
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in migration_files(directory):
                if path.stem in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text().encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,)
                    )
                log.info("applied migration %s", path.stem)
                applied_now.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
