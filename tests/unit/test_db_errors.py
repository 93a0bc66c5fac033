"""How database failures become API errors: conflicts, bad values and an unreachable database."""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest
from psycopg_pool import PoolTimeout

from agentserver.db.database import translate
from agentserver.errors import Conflict, DatabaseUnavailable, Invalid, NotFound


@pytest.mark.parametrize(
    ("exc", "expected", "status"),
    [
        (psycopg.errors.UniqueViolation("dup"), Conflict, 409),
        (psycopg.errors.ForeignKeyViolation("fk"), NotFound, 404),
        (psycopg.errors.CheckViolation("check"), Invalid, 400),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), Invalid, 400),
        (psycopg.errors.NumericValueOutOfRange("big"), Invalid, 400),
        (psycopg.OperationalError("connection refused"), DatabaseUnavailable, 503),
        (psycopg.errors.AdminShutdown("terminating connection"), DatabaseUnavailable, 503),
        (psycopg.errors.SerializationFailure("retry"), DatabaseUnavailable, 503),
        (psycopg.InterfaceError("the connection is closed"), DatabaseUnavailable, 503),
        (PoolTimeout("no connection in 5 s"), DatabaseUnavailable, 503),
    ],
)
def test_psycopg_failures_map_to_api_errors(exc: Exception, expected: type, status: int) -> None:
    """Each family of database failure becomes the matching error class and HTTP status."""
    error = translate(exc)
    assert isinstance(error, expected)
    assert error.status == status
    assert str(exc) not in error.message  # server details stay in the log, not the API


def test_programming_errors_are_not_hidden() -> None:
    """A bug (an unknown table) is re-raised as is, to be logged as a 500, not disguised."""
    bug = psycopg.errors.UndefinedTable("relation missing does not exist")
    with pytest.raises(psycopg.errors.UndefinedTable):
        translate(bug)
