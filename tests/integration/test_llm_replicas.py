"""The LLM proxy off the database: change notices between replicas, the daily quota counted
across replicas, and usage rows written in batches that a clean shutdown never loses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from agentserver.db.database import open_database
from agentserver.db.notify import SANDBOX_CHANGED, Notice
from tests.conftest import Server, make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.anthropic import open_anthropic
from tests.support.llm_world import (
    BODY,
    MESSAGES,
    REAL_KEY,
    Env,
    add_sandbox,
    anthropic_error,
    open_env,
)


@pytest.fixture
def options() -> dict[str, str]:
    return {}


@pytest.fixture
async def env(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, options: dict[str, str]
) -> AsyncIterator[Env]:
    async with open_env(nursery, db_url, tmp_path, options) as world:
        yield world


class Arrivals:
    """Waits for a notice about one id to reach a server's change subscribers."""

    def __init__(self, server: Server, channel: str, payload: str) -> None:
        self.payload = payload
        self.arrived = trio.Event()
        server.deps.db.changes.subscribe(channel, self)

    def notice(self, notice: Notice) -> None:
        if notice.payload == self.payload:
            self.arrived.set()

    def reset(self) -> None:
        pass


def count_lookups(env: Env, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    db = env.server.deps.db
    one = db.one
    lookups: list[str] = []

    async def counting(name: str, cls: Any, /, **params: Any) -> Any:
        if name == "llm_caller_by_token":
            lookups.append(name)
        return await one(name, cls, **params)

    monkeypatch.setattr(db, "one", counting)
    return lookups


async def test_a_pause_on_another_replica_refuses_the_token_at_once(
    env: Env, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token served from memory is refused on the first call after another replica (another
    pool over the same database) pauses its sandbox: the NOTIFY reached this one's listener."""
    lookups = count_lookups(env, monkeypatch)
    arrivals = Arrivals(env.server, SANDBOX_CHANGED, env.sandbox_id)
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        assert len(lookups) == 1  # the second call was admitted from memory
        async with open_database(db_url, listen_changes=False) as other:
            await other.transaction(
                lambda tx: tx.conn.execute(
                    "UPDATE sandboxes SET status = 'paused' WHERE id = %s", (env.sandbox_id,)
                )
            )
        with trio.fail_after(10):
            await arrivals.arrived.wait()
        refused = await client.post(MESSAGES, json=BODY)
    assert "paused" in anthropic_error(refused, 403, "permission_error")
    assert len(env.standin.received) == 2


async def test_a_lost_listener_reconnects_and_drops_what_it_held(
    env: Env, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the listener's connection dies, notices may be lost: the cache is not used until it
    is back, and everything it held is looked up again."""
    lookups = count_lookups(env, monkeypatch)
    changes = env.server.deps.db.changes
    flips: list[bool] = []
    back = trio.Event()
    set_live = changes.set_live

    def noting(live: bool) -> None:
        set_live(live)
        flips.append(live)
        if live:
            back.set()

    monkeypatch.setattr(changes, "set_live", noting)
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            )
        with trio.fail_after(20):
            await back.wait()
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
    assert flips == [False, True]
    assert len(lookups) == 2  # looked up again after the gap


QUOTA = 150


async def test_another_replica_counts_the_calls_in_flight_here(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Streams held open on one replica reserve the day's quota for the other replicas too, as
    soon as a sync publishes them: the other replica refuses instead of overshooting."""
    standin = await open_anthropic(nursery)
    settings = make_settings(
        db_url,
        tmp_path / "data-b",
        anthropic_base_url=standin.url + "/gateway",
        anthropic_api_key=REAL_KEY,
        llm_tokens_per_day=str(QUOTA),
    )
    # Started first: a replica's start-up reconciliation would fail a sandbox it cannot find.
    other = await start_server(nursery, settings)
    quota = {"llm_tokens_per_day": str(QUOTA)}
    async with open_env(nursery, db_url, tmp_path, quota) as env:
        await hold_the_quota_here_and_call_there(env, other, standin)


async def hold_the_quota_here_and_call_there(env: Env, other: Server, standin: Any) -> None:
    """Two streams held open on `env`'s server; after its sync, one call on `other`."""
    release = trio.Event()
    admitted: list[int] = []

    async def pace(index: int) -> None:
        await release.wait()

    async def stream(client: httpx.AsyncClient, holding: trio.Event) -> None:
        async with client.stream("POST", MESSAGES, json=BODY | {"stream": True}) as response:
            admitted.append(response.status_code)
            holding.set()
            await response.aread()

    env.standin.pace = pace
    async with env.sandbox_client() as here:
        with trio.fail_after(30):
            async with trio.open_nursery() as calls:
                for _ in range(2):  # two reservations of 94 tokens: 188 ≥ 150
                    holding = trio.Event()
                    calls.start_soon(stream, here, holding)
                    await holding.wait()
                await env.server.running.llm.recorder.sync()
                async with httpx.AsyncClient(
                    base_url=other.url, headers={"x-api-key": env.token}, timeout=30
                ) as there:
                    refused = await there.post(MESSAGES, json=BODY)
                release.set()
    other.shutdown.set()
    assert admitted == [200, 200]
    assert "tokens" in anthropic_error(refused, 429, "rate_limit_error")
    assert standin.received == []  # refused without an upstream request
    totals = (await env.usage())["totals"]
    assert totals["totalTokens"] == 2 * sum(env.standin.reply.usage().values())


async def test_a_clean_shutdown_writes_every_usage_row(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Rows still buffered when the server is told to stop are written before it returns: the
    rows equal what the stand-in reported, call for call and token for token."""
    calls = 12
    standin = await open_anthropic(nursery)
    settings = make_settings(
        db_url, tmp_path / "data", anthropic_base_url=standin.url, anthropic_api_key=REAL_KEY
    )
    async with trio.open_nursery() as serving:  # returns once the server has stopped
        server = await start_server(serving, settings)
        async with server.client() as owner:
            user, workspace = await owner_of_workspace(owner, workspace="llm")
        _, token = await add_sandbox(server, workspace["id"], user["id"])
        recorder = server.running.llm.recorder
        db = recorder.db

        class HeldUntilShutdown:
            """The database as the recorder sees it: nothing is written before shutdown."""

            def __getattr__(self, name: str) -> Any:
                return getattr(db, name)

            async def transaction(self, fn: Any) -> Any:
                await server.shutdown.wait()
                return await db.transaction(fn)

        recorder.db = HeldUntilShutdown()  # type: ignore[assignment]
        async with httpx.AsyncClient(base_url=server.url, headers={"x-api-key": token}) as client:
            for index in range(calls):
                stream = {"stream": True} if index % 2 else {}
                assert (await client.post(MESSAGES, json=BODY | stream)).status_code == 200
        written = await db.transaction(
            lambda tx: tx.conn.execute("SELECT count(*) FROM llm_usage").fetchone()[0]
        )
        assert written == 0  # all of them still buffered
        server.shutdown.set()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT count(*), sum(input_tokens), sum(output_tokens),"
            " sum(cache_creation_input_tokens), sum(cache_read_input_tokens) FROM llm_usage"
        ).fetchone()
    assert rows is not None
    served = standin.served
    want = [sum(s.usage[k] for s in served) for k in served[0].usage]
    assert len(served) == calls
    assert list(rows) == [calls, *want]
