"""Refused LLM proxy calls: logged (rate-limited), counted per sandbox and reason, in usage."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support.llm_world import BODY, MESSAGES, Env, open_env, sql
from tests.support.server_paths import Path as ServerPath

PROXY_LOGGER = "agentserver.llm.proxy"


@pytest.fixture
def options() -> dict[str, str]:
    return {}


@pytest.fixture
async def env(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    options: dict[str, str],
    server_path: ServerPath,
) -> AsyncIterator[Env]:
    """Each test runs with the calls served by the front door and by hypercorn."""
    async with open_env(nursery, db_url, tmp_path, options) as world:
        yield world


async def refused(env: Env) -> list[dict[str, Any]]:
    return list((await env.usage())["refused"])


async def refusal_rows(env: Env) -> list[tuple[Any, ...]]:
    def read(tx: Any) -> list[tuple[Any, ...]]:
        return list(
            tx.conn.execute("SELECT sandbox_id, reason, count FROM llm_refusals").fetchall()
        )

    rows: list[tuple[Any, ...]] = await env.server.deps.db.transaction(read)
    return rows


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == PROXY_LOGGER and "refused a call" in r.getMessage()
    ]


def only(entries: list[dict[str, Any]], env: Env, reason: str, count: int) -> None:
    assert len(entries) == 1, entries
    entry = entries[0]
    assert (entry["sandboxId"], entry["reason"], entry["count"]) == (env.sandbox_id, reason, count)
    assert entry["sandboxName"].startswith("box-")
    assert entry["lastAt"]


@pytest.mark.parametrize("options", [{"anthropic_api_key": ""}])
async def test_no_credentials_is_counted(env: Env) -> None:
    async with env.sandbox_client() as client:
        for _ in range(2):
            assert (await client.post(MESSAGES, json=BODY)).status_code == 503
    only(await refused(env), env, "no_credentials", 2)
    assert env.standin.received == []


@pytest.mark.parametrize("options", [{"llm_tokens_per_day": "50"}])
async def test_quota_reached_is_counted(env: Env) -> None:
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        for _ in range(3):
            assert (await client.post(MESSAGES, json=BODY)).status_code == 429
    only(await refused(env), env, "quota_reached", 3)
    assert len(env.standin.received) == 1
    assert (await env.usage())["totals"]["requests"] == 1  # successful usage is apart


@pytest.mark.parametrize("options", [{"llm_rpm": "1"}])
async def test_rate_limit_is_counted(env: Env) -> None:
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        for _ in range(2):
            assert (await client.post(MESSAGES, json=BODY)).status_code == 429
    only(await refused(env), env, "rate_limited", 2)
    assert len(env.standin.received) == 1


@pytest.mark.parametrize("options", [{"llm_models": "claude-haiku-*"}])
async def test_model_not_allowed_is_counted_with_its_model(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PROXY_LOGGER)
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 403
    only(await refused(env), env, "model_not_allowed", 1)
    [line] = refusal_lines(caplog)
    assert f"sandbox={env.sandbox_id}" in line
    assert "reason=model_not_allowed" in line
    assert "model=claude-sonnet-4-5" in line
    assert env.token not in line
    assert env.standin.received == []


async def test_inactive_sandbox_is_counted(env: Env) -> None:
    await sql(env.server, "UPDATE sandboxes SET status = 'paused' WHERE id = %s", env.sandbox_id)
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 403
    only(await refused(env), env, "sandbox_inactive", 1)
    assert env.standin.received == []


async def test_route_not_forwarded_is_counted_under_its_sandbox(env: Env) -> None:
    async with env.sandbox_client() as client:
        assert (await client.get("/proxy/anthropic/v1/files")).status_code == 404
    only(await refused(env), env, "route_not_forwarded", 1)
    assert env.standin.received == []


async def test_token_of_a_deleted_sandbox_is_counted_as_revoked(env: Env) -> None:
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200  # cached now
        await sql(env.server, "DELETE FROM sandboxes WHERE id = %s", env.sandbox_id)
        assert (await client.post(MESSAGES, json=BODY)).status_code == 401
    only(await refused(env), env, "token_revoked", 1)
    assert len(env.standin.received) == 1


async def test_unknown_token_is_logged_without_the_token(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PROXY_LOGGER)
    secret = "made-up-token-1234567890"
    async with httpx.AsyncClient(base_url=env.server.url) as client:
        response = await client.post(MESSAGES, json=BODY, headers={"x-api-key": secret})
    assert response.status_code == 401
    [line] = refusal_lines(caplog)
    assert "reason=unknown_token" in line
    assert secret not in line
    assert await refused(env) == []  # no sandbox to show it under
    assert env.standin.received == []


@pytest.mark.parametrize("options", [{"llm_tokens_per_day": "50"}])
async def test_a_flood_makes_one_row_and_one_log_line(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PROXY_LOGGER)
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        statuses: list[int] = []

        async def call() -> None:
            statuses.append((await client.post(MESSAGES, json=BODY)).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(call)
        for _ in range(20):
            await call()
    assert statuses == [429] * 60
    only(await refused(env), env, "quota_reached", 60)
    assert await refusal_rows(env) == [(env.sandbox_id, "quota_reached", 60)]
    lines = refusal_lines(caplog)
    assert len(lines) == 1, lines
    assert len(env.standin.received) == 1


async def test_successful_calls_write_no_refusals(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = env.server.deps.db
    names: list[str] = []
    exec_query = db.exec

    async def noting(name: str, /, **params: Any) -> int:
        names.append(name)
        result: int = await exec_query(name, **params)
        return result

    monkeypatch.setattr(db, "exec", noting)
    async with env.sandbox_client() as client:
        for _ in range(3):
            assert (await client.post(MESSAGES, json=BODY)).status_code == 200
    assert "llm_refusal_add" not in names
    assert await refusal_rows(env) == []
    assert await refused(env) == []
