"""What the LLM proxy lets through: its endpoints, the model allow-list, the daily token quota
under concurrent calls, and the cost of unknown tokens (against the local stand-in)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.support.anthropic import MODELS, Reply, model_json, models_json
from tests.support.llm_world import (
    BODY,
    MESSAGES,
    REAL_KEY,
    Env,
    SettledCalls,
    anthropic_error,
    open_env,
)

PROXY = "/proxy/anthropic"


@pytest.fixture
def options() -> dict[str, str]:
    """Server options for the test; tests override by parametrizing this."""
    return {}


@pytest.fixture
async def env(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, options: dict[str, str]
) -> AsyncIterator[Env]:
    """A server in front of a stand-in, with a workspace and a running sandbox."""
    async with open_env(nursery, db_url, tmp_path, options) as world:
        yield world


FORBIDDEN = [
    ("POST", "/v1/messages/batches", BODY),
    ("GET", "/v1/messages/batches", None),
    ("GET", "/v1/messages/batches/msgbatch_01/results", None),
    ("GET", "/v1/files", None),
    ("GET", "/v1/files/file_01/content", None),
    ("DELETE", "/v1/files/file_01", None),
    ("GET", "/v1/organizations/me", None),
    ("POST", "/v1/complete", BODY),
    ("GET", "/v1/messages", None),
    ("POST", "/v1//messages", BODY),
    ("POST", "/v1/messages/", BODY),
    ("POST", "/v1/messages%2Fbatches", BODY),
]


@pytest.mark.parametrize(("method", "path", "body"), FORBIDDEN)
async def test_other_endpoints_are_not_forwarded(
    env: Env, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """Batches, Files and every other endpoint get 404 in Anthropic's shape and never leave."""
    async with env.sandbox_client() as client:
        response = await client.request(method, PROXY + path, json=body)
    anthropic_error(response, 404, "not_found_error")
    assert env.standin.received == []
    assert (await env.usage())["totals"]["requests"] == 0


async def test_agent_endpoints_are_forwarded(env: Env) -> None:
    """Messages (with a query), count_tokens and the models listing reach the stand-in."""
    async with env.sandbox_client() as client:
        models = await client.get(PROXY + "/v1/models?limit=20")
        model = await client.get(f"{PROXY}/v1/models/{MODELS[1]}")
        counted = await client.post(PROXY + "/v1/messages/count_tokens", json=BODY)
        message = await client.post(MESSAGES + "?beta=true", json=BODY)
    assert (models.status_code, models.json()) == (200, models_json())
    assert (model.status_code, model.json()) == (200, model_json(MODELS[1]))
    assert counted.json() == {"input_tokens": env.standin.reply.input_tokens}
    assert message.json()["type"] == "message"
    assert [(r.method, r.path, r.query) for r in env.standin.received] == [
        ("GET", "/gateway/v1/models", "limit=20"),
        ("GET", f"/gateway/v1/models/{MODELS[1]}", ""),
        ("POST", "/gateway/v1/messages/count_tokens", ""),
        ("POST", "/gateway/v1/messages", "beta=true"),
    ]
    assert all(r.header("x-api-key") == REAL_KEY for r in env.standin.received)


UNREADABLE = [
    (b'{"max_tokens": 8, "messages": []}', "application/json"),
    (b'{"model": 7, "max_tokens": 8}', "application/json"),
    (b'{"model": "claude-haiku-4-5", "max_tokens": 8}', "text/plain"),
    (b"model=claude-opus-4-1", "application/x-www-form-urlencoded"),
    (b"", "application/json"),
]


@pytest.mark.parametrize("options", [{"llm_models": "claude-haiku-*"}])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize(("body", "content_type"), UNREADABLE)
async def test_allow_list_refuses_a_body_without_a_readable_model(
    env: Env, path: str, body: bytes, content_type: str
) -> None:
    """With an allow-list, a call whose model the proxy cannot read is a 400, never forwarded."""
    async with env.sandbox_client() as client:
        response = await client.post(
            PROXY + path, content=body, headers={"content-type": content_type}
        )
    anthropic_error(response, 400, "invalid_request_error")
    assert env.standin.received == []


@pytest.mark.parametrize("options", [{"llm_models": "claude-haiku-*"}])
async def test_a_model_given_twice_is_refused(env: Env) -> None:
    """Two `model` keys (an allowed one last) cannot smuggle another model past the allow-list."""
    body = b'{"model": "claude-opus-4-1", "max_tokens": 8, "model": "claude-haiku-4-5"}'
    async with env.sandbox_client() as client:
        response = await client.post(
            MESSAGES, content=body, headers={"content-type": "application/json"}
        )
    assert "more than once" in anthropic_error(response, 400, "invalid_request_error")
    assert env.standin.received == []


async def test_deeply_nested_json_is_a_400(env: Env) -> None:
    """A body nested deeper than the JSON parser goes gets a clear 400, not a 500."""
    body = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with env.sandbox_client() as client:
        response = await client.post(
            MESSAGES, content=body, headers={"content-type": "application/json"}
        )
    anthropic_error(response, 400, "invalid_request_error")
    assert env.standin.received == []


PER_DAY = 150
CALLS = 6


@pytest.mark.parametrize("options", [{"llm_tokens_per_day": str(PER_DAY)}])
async def test_concurrent_streams_cannot_overshoot_the_daily_quota(env: Env) -> None:
    """Streams started together pass the day's quota by at most one call's max_tokens."""
    release = trio.Event()
    statuses: list[int] = []

    async def pace(index: int) -> None:
        await release.wait()  # every admitted stream stays open until all calls are answered

    async def call(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", MESSAGES, json=BODY | {"stream": True}) as response:
            statuses.append(response.status_code)
            if len(statuses) == CALLS:
                release.set()
            await response.aread()

    env.standin.pace = pace
    async with env.sandbox_client() as client:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(CALLS):
                    nursery.start_soon(call, client)
    admitted = statuses.count(200)
    assert statuses.count(429) == CALLS - admitted >= 1
    total = (await env.usage())["totals"]["totalTokens"]
    per_call = sum(env.standin.reply.usage().values())
    assert total == admitted * per_call
    assert total <= PER_DAY + BODY["max_tokens"]  # type: ignore[operator]


@pytest.mark.parametrize("options", [{"llm_tokens_per_day": "200"}])
async def test_reservations_are_released_when_calls_end_badly(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's reservation is given back when it fails, is cut off or its caller hangs up."""
    # What the three calls use leaves room for the last one; one reservation left behind
    # (the call's input estimate + 64 tokens) would not.
    settled = SettledCalls(env.server, monkeypatch)

    async def pace(index: int) -> None:
        if index >= 3:  # after message_start, content_block_start and ping
            await trio.sleep_forever()

    async with env.sandbox_client() as client:
        env.standin.reply = Reply(status=529, error_type="overloaded_error")
        failed = await client.post(MESSAGES, json=BODY)
        env.standin.reply = Reply(break_after=1)
        cut = await client.post(MESSAGES, json=BODY | {"stream": True})
        env.standin.reply, env.standin.pace = Reply(), pace
        async with client.stream("POST", MESSAGES, json=BODY | {"stream": True}) as held:
            async for chunk in held.aiter_raw():
                if b"event: ping" in chunk:
                    break
        with trio.fail_after(10):
            await settled.wait_for(3)  # the hung-up call's row is completed by its handler
        env.standin.pace = None
        after = await client.post(MESSAGES, json=BODY)
    anthropic_error(failed, 529, "overloaded_error")
    assert cut.status_code == 200
    assert b"message_start" in cut.content
    assert b"message_stop" not in cut.content
    assert after.status_code == 200, after.text
    start = sum((env.standin.reply.usage() | {"output_tokens": 1}).values())
    totals = (await env.usage())["totals"]
    assert totals["totalTokens"] == 2 * start + sum(env.standin.reply.usage().values())


@pytest.mark.parametrize("options", [{"llm_tokens_per_day": "1000"}])
async def test_max_tokens_is_required_under_a_quota(env: Env) -> None:
    """Under a daily quota a Messages call without a usable max_tokens is a 400, not forwarded."""
    async with env.sandbox_client() as client:
        missing = await client.post(MESSAGES, json={"model": BODY["model"], "messages": []})
        odd = await client.post(MESSAGES, json=BODY | {"max_tokens": "64"})
        counted = await client.post(PROXY + "/v1/messages/count_tokens", json=BODY)
    for response in (missing, odd):
        assert "max_tokens" in anthropic_error(response, 400, "invalid_request_error")
    assert counted.status_code == 200
    assert [r.path for r in env.standin.received] == ["/gateway/v1/messages/count_tokens"]


async def test_an_unknown_token_costs_one_lookup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeating an unknown token gets 401 each time but asks the database only once."""
    db = env.server.deps.db
    lookups: list[str] = []
    one = db.one

    async def counting(name: str, cls: Any, /, **params: Any) -> Any:
        if name == "llm_caller_by_token":
            lookups.append(params["token_hash"])
        return await one(name, cls, **params)

    monkeypatch.setattr(db, "one", counting)
    async with env.sandbox_client(token="made-up") as stranger, env.sandbox_client() as sandbox:
        answers = [await stranger.post(MESSAGES, json=BODY) for _ in range(20)]
        known = await sandbox.post(MESSAGES, json=BODY)
    for response in answers:
        anthropic_error(response, 401, "authentication_error")
    assert len(lookups) == 2  # the made-up token once, the sandbox's own token once
    assert known.status_code == 200
    assert json.loads(env.standin.received[0].body)["model"] == BODY["model"]


async def test_made_up_tokens_hold_few_database_connections(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many made-up tokens arrive at once, only two of them are looked up at a time."""
    db = env.server.deps.db
    one = db.one
    inside, most = 0, 0
    release = trio.Event()

    async def gated(name: str, cls: Any, /, **params: Any) -> Any:
        nonlocal inside, most
        if name != "llm_caller_by_token":
            return await one(name, cls, **params)
        inside += 1
        most = max(most, inside)
        await release.wait()
        inside -= 1
        return await one(name, cls, **params)

    async def stranger(index: int) -> None:
        async with env.sandbox_client(token=f"made-up-{index}") as client:
            statuses.append((await client.post(MESSAGES, json=BODY)).status_code)

    statuses: list[int] = []
    monkeypatch.setattr(db, "one", gated)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index in range(8):
                nursery.start_soon(stranger, index)
            await trio.testing.wait_all_tasks_blocked()
            assert most == 2
            release.set()
    assert statuses == [401] * 8
