"""Migrations: applied in order, each exactly once, even when two servers start together."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from agentserver.db.migrate import apply_migrations, migration_files
from agentserver.errors import DatabaseUnavailable, MigrationFailed


def applied_versions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        ]


def test_two_concurrent_runs_apply_each_migration_exactly_once(db_url: str) -> None:
    """Two threads migrating one fresh database together apply every migration once between them."""
    expected = [p.stem for p in migration_files()]
    assert expected, "no migrations found"
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(apply_migrations(db_url))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 2
    assert sorted(results[0] + results[1]) == expected  # no migration applied twice, none missed
    assert applied_versions(db_url) == expected
    assert apply_migrations(db_url) == []


def test_migrations_apply_in_order_and_resume(db_url: str, tmp_path: Path) -> None:
    """A later run applies only the new files, in numeric order."""
    first = tmp_path / "0001_a.sql"
    first.write_text("CREATE TABLE a (id int);")
    assert apply_migrations(db_url, tmp_path) == ["0001_a"]
    (tmp_path / "0003_c.sql").write_text("ALTER TABLE a ADD COLUMN c int;")
    (tmp_path / "0002_b.sql").write_text("ALTER TABLE a ADD COLUMN b int;")
    (tmp_path / "notes.sql").write_text("this is not a migration")
    assert apply_migrations(db_url, tmp_path) == ["0002_b", "0003_c"]
    with psycopg.connect(db_url) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'a' "
                "ORDER BY ordinal_position"
            )
        ]
    assert columns == ["id", "b", "c"]


def test_a_failing_migration_leaves_nothing_half_done(db_url: str, tmp_path: Path) -> None:
    """A migration that fails is rolled back entirely and not recorded; the lock is released."""
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int);\nSELECT * FROM missing;")
    with pytest.raises(MigrationFailed, match=r"^migration 0002_bad.sql failed: .*missing"):
        apply_migrations(db_url, tmp_path)
    assert applied_versions(db_url) == ["0001_ok"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int);")
    assert apply_migrations(db_url, tmp_path) == ["0002_bad"]


def test_an_unreachable_database_is_database_unavailable() -> None:
    """Migrating against a closed port raises DatabaseUnavailable, not a psycopg error."""
    with pytest.raises(DatabaseUnavailable, match="cannot connect to the database"):
        apply_migrations("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_only_accounts_made_by_sso_start_with_a_vouched_for_email(
    db_url: str, tmp_path: Path
) -> None:
    """Upgrading to 0006 marks the address of an account an SSO sign-in created (no password)
    as verified, never one typed in at registration."""
    files = migration_files()
    for path in files:
        if path.stem < "0006":
            (tmp_path / path.name).write_text(path.read_text())
    apply_migrations(db_url, tmp_path)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (username, email, password_hash) VALUES"
            " ('by-sso', 'sso@example.com', NULL), ('typed', 'typed@example.com', 'argon2-hash'),"
            " ('no-email', NULL, NULL)"
        )
    for path in files:
        (tmp_path / path.name).write_text(path.read_text())
    assert "0006_email_verified" in apply_migrations(db_url, tmp_path)
    with psycopg.connect(db_url) as conn:
        verified = dict(conn.execute("SELECT username, email_verified FROM users").fetchall())
    assert verified == {"by-sso": True, "typed": False, "no-email": False}
