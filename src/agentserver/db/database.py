"""The PostgreSQL pool, used from trio through worker threads; the only psycopg importer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import trio
from psycopg.rows import class_row, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from agentserver.db import sqlfile
from agentserver.db.notify import CHANNELS, Changes, Notice, listen, notice_of
from agentserver.db.paths import sql_dir
from agentserver.errors import AgentServerError, Conflict, DatabaseUnavailable, Invalid, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def load_queries(directory: Path | None = None) -> dict[str, sqlfile.Query]:
    """Every named query in `sql/queries/*.sql`; a name used twice across files is an error."""
    queries: dict[str, sqlfile.Query] = {}
    for path in sorted((directory or sql_dir() / "queries").glob("*.sql")):
        for name, query in sqlfile.parse(path.read_text(), path.name).items():
            if name in queries:
                raise sqlfile.SqlFileError(
                    f"{query.source}: {name!r} also in {queries[name].source}"
                )
            queries[name] = query
    return queries


def translate(exc: Exception) -> AgentServerError:
    """Map a psycopg failure to our error hierarchy (httpcore `map_exceptions` style)."""
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return Conflict("already exists")
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return NotFound("a referenced record does not exist")
    if isinstance(exc, psycopg.errors.CheckViolation | psycopg.errors.DataError):
        return Invalid("a value is out of range or has characters the database cannot store")
    # OperationalError covers lost connections, shutdowns, timeouts and serialization retries;
    # InterfaceError a connection that was closed under us.
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout):
        return DatabaseUnavailable("the database is unavailable")
    raise exc


class Tx:
    """One connection inside a transaction, for use inside `Database.transaction` callbacks."""

    def __init__(self, conn: psycopg.Connection[Any], queries: dict[str, sqlfile.Query]) -> None:
        self.conn = conn
        self._queries = queries

    def _query(self, name: str, /, *kinds: sqlfile.Kind) -> sqlfile.Query:
        query = self._queries[name]
        if query.kind not in kinds:
            raise TypeError(f"query {name} is :{query.kind}, not {'/'.join(kinds)}")
        return query

    def one(self, name: str, cls: type[T], /, **params: Any) -> T | None:
        query = self._query(name, sqlfile.Kind.ONE)
        with self.conn.cursor(row_factory=class_row(cls)) as cur:
            cur.execute(query.sql, params)
            return cur.fetchone()

    def many(self, name: str, cls: type[T], /, **params: Any) -> list[T]:
        query = self._query(name, sqlfile.Kind.MANY)
        with self.conn.cursor(row_factory=class_row(cls)) as cur:
            cur.execute(query.sql, params)
            return cur.fetchall()

    def rows(self, name: str, /, **params: Any) -> list[dict[str, Any]]:
        query = self._query(name, sqlfile.Kind.MANY, sqlfile.Kind.ONE)
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query.sql, params)
            return cur.fetchall()

    def scalar(self, name: str, /, **params: Any) -> Any:
        query = self._query(name, sqlfile.Kind.SCALAR)
        with self.conn.cursor() as cur:
            cur.execute(query.sql, params)
            row = cur.fetchone()
            return None if row is None else row[0]

    def exec(self, name: str, /, **params: Any) -> int:
        query = self._query(name, sqlfile.Kind.EXEC, sqlfile.Kind.EXECROWS)
        with self.conn.cursor() as cur:
            cur.execute(query.sql, params)
            return cur.rowcount

    def exec_many(self, name: str, rows: list[dict[str, Any]], /) -> None:
        """One statement for many parameter sets (psycopg pipelines them: one round trip)."""
        query = self._query(name, sqlfile.Kind.EXEC, sqlfile.Kind.EXECROWS)
        with self.conn.cursor() as cur:
            cur.executemany(query.sql, rows)


class Database:
    """Named queries run in worker threads against a psycopg connection pool."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        queries: dict[str, sqlfile.Query],
        changes: Changes | None = None,
    ) -> None:
        self.pool = pool
        self.queries = queries
        # Change notices: from other replicas through `listen`, from this one's own
        # transactions through the NOTICE their triggers raise (handed on below).
        self.changes = changes or Changes()
        self._limiter = trio.CapacityLimiter(pool.max_size)

    async def transaction(self, fn: Callable[[Tx], R]) -> R:
        """Run `fn` with one connection in one transaction, in a worker thread; the changes it
        announced reach this process's subscribers before it returns."""
        seen: list[Notice] = []

        def noted(diagnostic: psycopg.errors.Diagnostic) -> None:
            notice = notice_of(diagnostic)
            if notice is not None:
                seen.append(notice)

        def work() -> R:
            try:
                with self.pool.connection() as conn:
                    conn.add_notice_handler(noted)
                    try:
                        with conn.transaction():
                            return fn(Tx(conn, self.queries))
                    finally:
                        conn.remove_notice_handler(noted)
            except (psycopg.Error, PoolTimeout) as exc:
                raise translate(exc) from exc

        try:
            return await trio.to_thread.run_sync(work, limiter=self._limiter)
        finally:
            # Even when it failed: forgetting a cached copy is always safe.
            for notice in seen:
                self.changes.publish(notice)

    async def one(self, name: str, cls: type[T], /, **params: Any) -> T | None:
        return await self.transaction(lambda tx: tx.one(name, cls, **params))

    async def many(self, name: str, cls: type[T], /, **params: Any) -> list[T]:
        return await self.transaction(lambda tx: tx.many(name, cls, **params))

    async def rows(self, name: str, /, **params: Any) -> list[dict[str, Any]]:
        return await self.transaction(lambda tx: tx.rows(name, **params))

    async def scalar(self, name: str, /, **params: Any) -> Any:
        return await self.transaction(lambda tx: tx.scalar(name, **params))

    async def exec(self, name: str, /, **params: Any) -> int:
        return await self.transaction(lambda tx: tx.exec(name, **params))

    async def ping(self) -> bool:
        def work() -> bool:
            try:
                with self.pool.connection(timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except (psycopg.Error, PoolTimeout):
                return False

        return await trio.to_thread.run_sync(work, limiter=self._limiter)


def check_connect(url: str, timeout: float = 5.0) -> None:
    """Connect once, so a wrong URL fails at start with a clear message (blocking)."""
    try:
        psycopg.connect(url, connect_timeout=max(1, int(timeout))).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to the database: {first}") from None


@asynccontextmanager
async def open_database(
    url: str, *, min_size: int = 2, max_size: int = 10, listen_changes: bool = True
) -> AsyncIterator[Database]:
    """A pool for `url`, and (unless told not to) the listener of other replicas' change
    notices; the URL is checked first so a bad one fails fast and clearly."""
    queries = load_queries()
    await trio.to_thread.run_sync(check_connect, url)
    # check: a connection broken by a database restart is replaced at checkout instead of
    # failing one request; timeout: with the database down a request answers 503 within 5 s.
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=5,
        kwargs={"autocommit": False},
        name="agentserver",
        check=ConnectionPool.check_connection,
    )
    await trio.to_thread.run_sync(lambda: pool.open(wait=True, timeout=15))
    try:
        db = Database(pool, queries)
        async with trio.open_nursery() as nursery:
            if listen_changes:
                await nursery.start(partial(listen, url, CHANNELS, db.changes))
            yield db
            nursery.cancel_scope.cancel()
    finally:
        log.debug("closing the database pool")
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await trio.to_thread.run_sync(lambda: pool.close(timeout=5))
        log.debug("database pool closed")
