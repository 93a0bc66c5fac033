"""Every named query in sql/queries is valid against the migrated schema (sqlc-style PREPARE)."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from agentserver.db.database import load_queries
from agentserver.db.migrate import apply_migrations
from agentserver.db.sqlfile import Query

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def as_server_sql(query: Query) -> str:
    """The query as PREPARE wants it: `%(name)s` → `$n` by first use, `%%` → `%`."""
    numbers = {name: i for i, name in enumerate(query.params, 1)}
    return _PLACEHOLDER.sub(lambda m: f"${numbers[m.group(1)]}", query.sql).replace("%%", "%")


def test_placeholders_are_numbered_in_first_use_order() -> None:
    """The translation used below keeps repeated names on one number."""
    query = Query("q", "one", "SELECT %(a)s, %(b)s, %(a)s, 'x%%'", ("a", "b"), "t")  # type: ignore[arg-type]
    assert as_server_sql(query) == "SELECT $1, $2, $1, 'x%'"


QUERIES = load_queries()
PREPARABLE = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|VALUES|MERGE)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def schema(postgres: str) -> str:
    """One migrated database shared by the PREPARE checks (they change nothing)."""
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS prepare_check WITH (FORCE)")
        conn.execute("CREATE DATABASE prepare_check")
    url = make_conninfo(postgres, dbname="prepare_check")
    apply_migrations(url)
    return url


def test_there_are_queries() -> None:
    """The query files were found and parsed (guards against checking nothing)."""
    assert len(QUERIES) >= 20
    assert "get_session_user" in QUERIES


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_query_prepares_against_the_schema(schema: str, name: str) -> None:
    """PostgreSQL parses, plans and type-checks the query: tables, columns and types all exist."""
    query = QUERIES[name]
    if not PREPARABLE.match(query.sql):
        # Utility statements (LOCK TABLE) cannot be prepared: run them in a rolled-back transaction.
        assert not query.params, f"{query.source} {name}: a utility statement cannot take params"
        with psycopg.connect(schema) as conn:
            conn.execute(query.sql.replace("%%", "%").encode())
            conn.rollback()
        return
    with psycopg.connect(schema, autocommit=True) as conn:
        try:
            conn.execute(f"PREPARE check_query AS {as_server_sql(query)}".encode())
        except psycopg.Error as exc:
            pytest.fail(f"{query.source} {name}: {exc}")
        described = conn.execute(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'check_query'"
        ).fetchone()
        assert described is not None
        assert len(described[0]) == len(query.params)
