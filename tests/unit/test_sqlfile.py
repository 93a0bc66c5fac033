"""The named-query file parser: headers, kinds, `:param` rewriting and its error messages."""

from __future__ import annotations

import pytest

from agentserver.db.sqlfile import Kind, Query, SqlFileError, parse


def one(text: str) -> Query:
    queries = parse(text, "q.sql")
    assert len(queries) == 1
    return next(iter(queries.values()))


def test_blocks_become_named_queries_with_kind_and_source() -> None:
    """Each `-- name: x :kind` header starts a query that runs until the next header."""
    queries = parse(
        "-- name: get_user :one\nSELECT 1;\n\n-- name: list_users :many\nSELECT 2\nFROM t;\n",
        "users.sql",
    )
    assert list(queries) == ["get_user", "list_users"]
    assert queries["get_user"].kind is Kind.ONE
    assert queries["get_user"].sql == "SELECT 1"
    assert queries["list_users"].sql == "SELECT 2\nFROM t"
    assert queries["list_users"].source == "users.sql:4"


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_is_accepted(kind: Kind) -> None:
    """All five kinds parse to the matching enum member."""
    assert one(f"-- name: q :{kind.value}\nSELECT 1").kind is kind


def test_params_become_psycopg_placeholders_in_first_use_order() -> None:
    """`:param` becomes `%(param)s`; a repeated name is listed once, in order of first use."""
    query = one("-- name: q :one\nSELECT * FROM t WHERE a = :b_id AND c = :a OR d = :b_id")
    assert query.sql == "SELECT * FROM t WHERE a = %(b_id)s AND c = %(a)s OR d = %(b_id)s"
    assert query.params == ("b_id", "a")


def test_casts_are_not_params() -> None:
    """`::text` is a cast, but `:x::int` is a parameter followed by a cast."""
    query = one("-- name: q :scalar\nSELECT gen_random_uuid()::text, :x::int")
    assert query.sql == "SELECT gen_random_uuid()::text, %(x)s::int"
    assert query.params == ("x",)


def test_literals_identifiers_and_comments_hide_colons() -> None:
    """Colons inside strings, quoted identifiers, dollar quotes and comments are left alone."""
    query = one(
        "-- name: q :one\n"
        "-- it's a comment with :nope\n"
        "SELECT 'a :lit '' :still', \"col:x\", $$ :dollar $$, $f$ :tagged $f$ /* :block */, :yes"
    )
    assert query.params == ("yes",)
    assert "'a :lit '' :still'" in query.sql
    assert '"col:x"' in query.sql
    assert "$$ :dollar $$" in query.sql
    assert "$f$ :tagged $f$" in query.sql
    assert "comment" not in query.sql
    assert ":block" not in query.sql


def test_percent_signs_are_escaped_for_psycopg() -> None:
    """A literal `%` (LIKE patterns, modulo) is doubled so psycopg keeps it."""
    query = one("-- name: q :many\nSELECT * FROM t WHERE n LIKE 'a%' AND id % 2 = :r")
    assert query.sql == "SELECT * FROM t WHERE n LIKE 'a%%' AND id %% 2 = %(r)s"


def test_comment_only_file_has_no_queries() -> None:
    """Leading comments and blank lines before the first header are allowed."""
    assert parse("-- queries about users\n\n", "x.sql") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "-- name: q :one\nSELECT 1\n-- name: q :many\nSELECT 2",
            "q.sql:3: query 'q' defined twice",
        ),
        ("-- name: q :first\nSELECT 1", "q.sql:1: unknown kind :first"),
        ("-- name: q :one\n-- only a comment\n;\n", "q.sql:1: query 'q' has no SQL"),
        ("SELECT 1\n-- name: q :one\nSELECT 2", "q.sql:1: SQL before the first `-- name:` header"),
        ("-- name: q\nSELECT 1", "q.sql:1: malformed header '-- name: q'"),
    ],
)
def test_malformed_files_are_refused_naming_file_and_line(text: str, message: str) -> None:
    """A broken file raises SqlFileError whose message starts with file:line and the problem."""
    with pytest.raises(SqlFileError) as info:
        parse(text, "q.sql")
    assert str(info.value).startswith(message)


def test_queries_are_frozen() -> None:
    """A parsed query cannot be changed after loading."""
    query = one("-- name: q :exec\nDELETE FROM t")
    with pytest.raises(AttributeError):
        query.sql = "DROP TABLE t"  # type: ignore[misc]
