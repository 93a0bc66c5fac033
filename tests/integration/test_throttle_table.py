"""Throttle counts in PostgreSQL (auth/throttle_table.py): the same rule as the in-memory model,
atomic across replicas, keys never stored in clear, expired rows pruned."""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio

from agentserver.auth.throttle import Counts, MemoryCounts, Throttle, ask_all
from agentserver.auth.throttle_table import DatabaseCounts
from agentserver.db.database import Database, open_database
from agentserver.db.migrate import apply_migrations

SECRET = bytes(range(32))


class Clock:
    """A clock the test moves by hand, from a whole second of today (exact in microseconds,
    and among the real rows' times, which pruning compares against)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await trio.to_thread.run_sync(apply_migrations, db_url)
    async with open_database(db_url, listen_changes=False) as database:
        yield database


@dataclass
class World:
    """Two stores, the model and the table, on one clock."""

    clock: Clock
    memory: MemoryCounts
    table: DatabaseCounts


@pytest.fixture
def world(db: Database) -> World:
    clock = Clock()
    return World(clock, MemoryCounts(clock), DatabaseCounts(db, SECRET, clock))


Step = tuple[str, object]


async def play(counts: Counts, clock: Clock, steps: list[Step]) -> list[object]:
    """Run `steps` on a throttle over `counts`; what each question answered, in order."""
    start = clock.now
    throttle = Throttle("test", limit=3, window=60.0, counts=counts)
    other = Throttle("other", limit=2, window=10.0, counts=counts)
    seen: list[object] = []
    for op, arg in steps:
        if op == "advance":
            assert isinstance(arg, float)
            clock.now += arg
        elif op == "fail":
            await throttle.fail(*str(arg).split())
        elif op == "retry_after":
            seen.append(await throttle.retry_after(*str(arg).split()))
        elif op == "spend":
            seen.append(await throttle.spend(str(arg)))
        elif op == "reset":
            await throttle.reset(str(arg))
        elif op == "both":  # one request spending a key of each throttle, `other` first
            standings = await ask_all(
                other.ask(str(arg), spend=True), throttle.ask(str(arg), spend=True)
            )
            seen.append([(s.recent, s.wait) for s in standings])
    clock.now = start
    return seen


SCRIPT: list[Step] = [
    ("fail", "user:a"),
    ("advance", 10.0),
    ("fail", "user:a addr:1"),
    ("retry_after", "user:a"),
    ("fail", "user:a"),
    ("retry_after", "user:a"),
    ("retry_after", "user:b addr:1"),
    ("advance", 49.5),
    ("retry_after", "user:a"),
    ("advance", 0.5),
    ("retry_after", "user:a"),
    ("spend", "addr:2"),
    ("spend", "addr:2"),
    ("spend", "addr:2"),
    ("spend", "addr:2"),
    ("reset", "addr:2"),
    ("spend", "addr:2"),
    ("both", "k"),
    ("both", "k"),
    ("both", "k"),
    ("advance", 10.0),
    ("both", "k"),
]


async def test_the_table_answers_as_the_model(world: World) -> None:
    """A scripted run: the wait until the oldest failure leaves the window (rounded up), keys
    independent, spends counted only until refused, a reset clearing one key, and a refused ask
    counting nothing after it; the table answers exactly as the in-memory model."""
    model = await play(world.memory, world.clock, SCRIPT)
    assert model == [
        0,
        50,
        0,
        1,
        0,
        0,
        0,
        0,
        60,
        0,
        [(0, 0), (0, 0)],
        [(1, 0), (1, 0)],
        [(2, 10), (2, 0)],  # refused by `other`: the second spend is not counted...
        [(0, 0), (2, 0)],  # ...so this one finds two failures, not three
    ]
    assert await play(world.table, world.clock, SCRIPT) == model


async def test_a_random_run_answers_as_the_model(world: World) -> None:
    """Three hundred random steps over a few keys: the table and the model agree on every one."""
    rng = random.Random(16)
    keys = ["user:a", "user:b", "addr:1", "addr:2"]
    steps: list[Step] = []
    for _ in range(300):
        op = rng.choice(["advance", "fail", "fail", "retry_after", "spend", "reset", "both"])
        if op == "advance":
            steps.append((op, float(rng.choice([0.5, 1.0, 7.0, 20.0, 59.0]))))
        elif op in ("fail", "retry_after"):
            steps.append((op, " ".join(rng.sample(keys, rng.randint(1, 2)))))
        else:
            steps.append((op, rng.choice(keys)))
    model = await play(world.memory, world.clock, steps)
    assert any(answer not in (0, [(0, 0), (0, 0)]) for answer in model)  # some were refused
    assert await play(world.table, world.clock, steps) == model


async def test_keys_are_stored_as_an_hmac_never_in_clear(world: World, db: Database) -> None:
    """What a throttled login looked like is not in the table: only its HMAC under the secret."""
    throttle = Throttle("login", limit=5, window=60.0, counts=world.table)
    await throttle.fail("login:hunter2-typed-as-a-name", "addr:203.0.113.5")
    stored = await db.transaction(
        lambda tx: tx.conn.execute(
            "SELECT scope, key_hash::text, hits::text FROM throttle_hits"
        ).fetchall()
    )
    assert len(stored) == 2
    assert "hunter2" not in repr(stored)
    assert "203.0.113.5" not in repr(stored)
    expected = hmac.new(SECRET, b"addr:203.0.113.5", hashlib.sha256).digest()
    assert await db.transaction(
        lambda tx: tx.conn.execute(
            "SELECT count(*) FROM throttle_hits WHERE key_hash = %s", (expected,)
        ).fetchone()
    ) == (1,)


async def count_rows(db: Database) -> int:
    row = await db.transaction(
        lambda tx: tx.conn.execute("SELECT count(*) FROM throttle_hits").fetchone()
    )
    assert row is not None
    return int(row[0])


async def test_expired_rows_are_pruned_by_later_hits(world: World, db: Database) -> None:
    """Rows whose failures all left the window go when later hits are recorded, failures or
    counted attempts alike; asking alone writes nothing."""
    throttle = Throttle("login", limit=5, window=60.0, counts=world.table)
    for i in range(30):
        await throttle.fail(f"addr:{i}")
    assert await count_rows(db) == 30
    world.clock.now += 61
    assert await throttle.retry_after("addr:0") == 0
    assert await count_rows(db) == 30
    await throttle.fail("addr:fresh")
    assert await count_rows(db) == 1
    for i in range(30):
        assert await throttle.spend(f"addr:{i}") == 0
    world.clock.now += 61
    assert await throttle.spend("addr:fresh") == 0
    assert await count_rows(db) == 1


async def test_concurrent_spends_on_two_replicas_never_pass_the_limit(
    db_url: str, db: Database
) -> None:
    """Thirty attempts at once through two replicas' pools: exactly `limit` are counted."""
    async with open_database(db_url, listen_changes=False) as other_db:
        throttles = [
            Throttle("password-work", limit=5, window=60.0, counts=DatabaseCounts(d, SECRET))
            for d in (db, other_db)
        ]
        waits: list[int] = []

        async def attempt(throttle: Throttle) -> None:
            waits.append(await throttle.spend("addr:203.0.113.9"))

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(attempt, throttles[i % 2])
    assert waits.count(0) == 5
    assert all(1 <= wait <= 60 for wait in waits if wait)


async def test_turns_are_spaced_across_replicas_and_the_queue_is_bounded(world: World) -> None:
    """Each turn starts a delay after the latest one, whichever replica takes it; one that would
    start past the queue's bound is refused and takes nothing; time passing frees the queue."""
    replicas = [world.table, DatabaseCounts(world.table.db, SECRET, world.clock)]
    waits = [await replicas[i % 2].turn("account", "user:1", 2.0, 6.0) for i in range(4)]
    assert waits == [2.0, 4.0, 6.0, None]
    world.clock.now += 5.0  # the latest turn is now 1 s away: the next is 3 s away
    assert await replicas[1].turn("account", "user:1", 2.0, 6.0) == 3.0
    assert await replicas[0].turn("account", "user:2", 2.0, 6.0) == 2.0
