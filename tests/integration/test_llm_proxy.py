"""The LLM proxy against a local Anthropic stand-in: keys, paths, streaming, usage, limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import Server, make_settings, register, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.anthropic import Reply, message_json
from tests.support.llm_world import (
    BODY,
    MESSAGES,
    REAL_KEY,
    Env,
    SettledCalls,
    add_sandbox,
    anthropic_error,
    open_env,
    sql,
)
from tests.support.server_paths import Path as ServerPath


@pytest.fixture
def options() -> dict[str, str]:
    """Server options for the test; tests override by parametrizing or replacing this."""
    return {}


@pytest.fixture
async def env(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    options: dict[str, str],
    server_path: ServerPath,
) -> AsyncIterator[Env]:
    """A server in front of a stand-in, with a workspace and a running sandbox; each test runs
    with the sandbox's calls served by the front door and by hypercorn (server_paths.py)."""
    async with open_env(nursery, db_url, tmp_path, options) as world:
        yield world


@pytest.fixture
async def api_env(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, options: dict[str, str]
) -> AsyncIterator[Env]:
    """The same world, for a test of the JSON API alone (no call through the proxy)."""
    async with open_env(nursery, db_url, tmp_path, options) as world:
        yield world


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
async def test_real_key_replaces_the_proxy_token(env: Env, style: str) -> None:
    """The stand-in gets the real key, never the proxy token; path prefix, query and body intact."""
    headers = {"x-api-key": ""} if style == "bearer" else {}
    if style == "bearer":
        headers["authorization"] = f"Bearer {env.token}"
    raw = json.dumps(BODY, indent=1).encode()  # spacing a re-encoder would change
    async with env.sandbox_client(**headers) as client:
        if style == "bearer":
            del client.headers["x-api-key"]
        response = await client.post(
            MESSAGES + "?beta=true&x=%2F", content=raw, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200, response.text
    assert response.json() == message_json(env.standin.reply)
    (got,) = env.standin.received
    assert (got.method, got.path, got.query, got.body) == (
        "POST",
        "/gateway/v1/messages",
        "beta=true&x=%2F",
        raw,
    )
    assert got.header("x-api-key") == REAL_KEY
    assert got.header("authorization") is None
    assert got.header("anthropic-version") == "2023-06-01"
    assert not any(env.token in value for _, value in got.headers)


@pytest.mark.parametrize(
    "options", [{"anthropic_api_key": "", "anthropic_auth_token": "real-bearer"}]
)
async def test_auth_token_is_sent_as_bearer_only(env: Env) -> None:
    """With only ANTHROPIC_AUTH_TOKEN set, upstream sees Bearer and no x-api-key at all."""
    async with env.sandbox_client(**{"anthropic-version": "2099-01-01"}) as client:
        response = await client.post(MESSAGES, json=BODY)
    assert response.status_code == 200, response.text
    (got,) = env.standin.received
    assert got.header("authorization") == "Bearer real-bearer"
    assert got.header("x-api-key") is None
    assert got.header("anthropic-version") == "2099-01-01"


@pytest.mark.parametrize("options", [{"anthropic_api_key": ""}])
async def test_no_credentials_configured_is_503(env: Env) -> None:
    """Without any Anthropic credential the proxy answers 503 in Anthropic's shape."""
    async with env.sandbox_client() as client:
        response = await client.post(MESSAGES, json=BODY)
    assert "credentials" in anthropic_error(response, 503, "api_error")
    assert env.standin.received == []


async def test_streamed_events_arrive_one_by_one(env: Env) -> None:
    """The client reads each SSE event before the stand-in writes the next (no buffering)."""
    seen = [trio.Event() for _ in range(64)]

    async def pace(index: int) -> None:
        with trio.fail_after(10):  # a buffering proxy would wait here forever
            await seen[index - 1].wait()

    env.standin.pace = pace
    events: list[dict[str, Any]] = []
    async with (
        env.sandbox_client() as client,
        client.stream("POST", MESSAGES, json=BODY | {"stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        pending = b""
        async for chunk in response.aiter_raw():
            pending += chunk
            while b"\n\n" in pending:
                block, pending = pending.split(b"\n\n", 1)
                data = next(line[6:] for line in block.split(b"\n") if line.startswith(b"data: "))
                events.append(json.loads(data))
                seen[len(events) - 1].set()
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "message_stop"
    totals = (await env.usage())["totals"]
    reply = env.standin.reply
    assert (totals["inputTokens"], totals["outputTokens"]) == (
        reply.input_tokens,
        reply.output_tokens,
    )


async def test_usage_shows_exactly_the_reported_tokens(env: Env) -> None:
    """Streaming and non-streaming calls are recorded with the stand-in's exact token counts."""
    async with env.sandbox_client() as client:
        env.standin.reply = Reply(
            input_tokens=101,
            output_tokens=23,
            cache_creation_input_tokens=7,
            cache_read_input_tokens=4000,
            start_input_tokens=90,
        )
        streamed = await client.post(MESSAGES, json=BODY | {"stream": True})
        env.standin.reply = Reply(
            input_tokens=5,
            output_tokens=9,
            cache_creation_input_tokens=0,
            cache_read_input_tokens=31,
            model="claude-haiku-4-5",
        )
        plain = await client.post(MESSAGES, json=BODY)
    assert streamed.status_code == plain.status_code == 200
    usage = await env.usage()
    want = {k: sum(s.usage[k] for s in env.standin.served) for k in env.standin.served[0].usage}
    totals = usage["totals"]
    assert totals["requests"] == 2
    assert totals["errors"] == 0
    assert (
        totals["inputTokens"],
        totals["outputTokens"],
        totals["cacheCreationInputTokens"],
        totals["cacheReadInputTokens"],
    ) == (
        want["input_tokens"],
        want["output_tokens"],
        want["cache_creation_input_tokens"],
        want["cache_read_input_tokens"],
    )
    assert totals["totalTokens"] == sum(want.values())
    by_model = {m["model"]: m["inputTokens"] for m in usage["byModel"]}
    assert by_model == {"claude-sonnet-4-5": 101, "claude-haiku-4-5": 5}
    assert [s["sandboxId"] for s in usage["bySandbox"]] == [env.sandbox_id]
    assert len(usage["byDay"]) == 1
    assert usage["byDay"][0]["requests"] == 2


async def test_deleted_sandbox_token_is_dead(env: Env) -> None:
    """Once the sandbox is deleted its token gets 401, and its past usage stays counted."""
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        await sql(env.server, "DELETE FROM sandboxes WHERE id = %s", env.sandbox_id)
        response = await client.post(MESSAGES, json=BODY)
    anthropic_error(response, 401, "authentication_error")
    usage = await env.usage()
    assert usage["totals"]["requests"] == 1
    assert usage["bySandbox"][0]["sandboxId"] is None


@pytest.mark.parametrize("status", ["paused", "failed", "offline"])
async def test_inactive_sandbox_is_refused(env: Env, status: str) -> None:
    """A sandbox that stops being creating/running is refused with 403 on its very next call."""
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        await sql(
            env.server, "UPDATE sandboxes SET status = %s WHERE id = %s", status, env.sandbox_id
        )
        response = await client.post(MESSAGES, json=BODY)
        again = await client.post(MESSAGES, json=BODY)
    assert status in anthropic_error(response, 403, "permission_error")
    anthropic_error(again, 403, "permission_error")
    assert len(env.standin.received) == 1


async def test_missing_or_unknown_token_is_401(env: Env) -> None:
    """No token, an unknown token or a non-Bearer Authorization all get 401."""
    async with httpx.AsyncClient(base_url=env.server.url) as client:
        missing = await client.post(MESSAGES, json=BODY)
        unknown = await client.post(MESSAGES, json=BODY, headers={"x-api-key": "nope"})
        basic = await client.post(
            MESSAGES, json=BODY, headers={"authorization": f"Basic {env.token}"}
        )
    for response in (missing, unknown, basic):
        anthropic_error(response, 401, "authentication_error")
    assert env.standin.received == []


@pytest.mark.parametrize("options", [{"llm_rpm": "2"}])
async def test_requests_per_minute_limit(env: Env) -> None:
    """Over the per-minute limit → 429 with Retry-After; an admin override lifts it."""
    async with env.sandbox_client() as client:
        for _ in range(2):
            assert (await client.post(MESSAGES, json=BODY)).status_code == 200
        limited = await client.post(MESSAGES, json=BODY)
        assert "per minute" in anthropic_error(limited, 429, "rate_limit_error")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        quota = await env.owner.put(
            f"/api/admin/workspaces/{env.workspace_id}/quota", json={"rpm": 0}
        )
        assert quota.status_code == 200
        assert quota.json()["effective"]["rpm"] == 0
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
    assert len(env.standin.received) == 3


@pytest.mark.parametrize("options", [{"llm_tokens_per_day": "50"}])
async def test_tokens_per_day_limit(env: Env) -> None:
    """Once today's tokens reach the limit the next call is 429 with Retry-After until midnight."""
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY | {"stream": True})).status_code == 200
        limited = await client.post(MESSAGES, json=BODY)
    assert "tokens" in anthropic_error(limited, 429, "rate_limit_error")
    assert 1 <= int(limited.headers["retry-after"]) <= 86400
    assert len(env.standin.received) == 1


@pytest.mark.parametrize("options", [{"llm_models": "claude-haiku-*, claude-sonnet-4-5"}])
async def test_model_allow_list(env: Env) -> None:
    """Models outside the allow-list get 403; listed names and patterns pass."""
    async with env.sandbox_client() as client:
        refused = await client.post(MESSAGES, json=BODY | {"model": "claude-opus-4-1"})
        haiku = await client.post(MESSAGES, json=BODY | {"model": "claude-haiku-4-5"})
        sonnet = await client.post(MESSAGES, json=BODY)
    assert "claude-opus-4-1" in anthropic_error(refused, 403, "permission_error")
    assert (haiku.status_code, sonnet.status_code) == (200, 200)
    assert [r.json()["model"] for r in env.standin.received] == [
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
    ]


@pytest.mark.parametrize("options", [{"llm_max_body": "1KiB"}])
async def test_oversized_bodies_are_413(env: Env) -> None:
    """A body over the limit gets 413 whether it declares its length or streams it chunked."""
    big = json.dumps(BODY | {"pad": "x" * 2048}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 256):
            yield big[start : start + 256]

    async with env.sandbox_client() as client:
        declared = await client.post(MESSAGES, content=big)
        chunked = await client.post(MESSAGES, content=chunks())
    anthropic_error(declared, 413, "request_too_large")
    anthropic_error(chunked, 413, "request_too_large")
    assert env.standin.received == []


async def test_bad_input_gets_clear_errors_never_500(env: Env) -> None:
    """Malformed JSON, dot segments and odd methods get 4xx in Anthropic's shape, never a 500."""
    async with env.sandbox_client() as client:
        malformed = await client.post(
            MESSAGES, content=b'{"model": ', headers={"content-type": "application/json"}
        )
        dots = await client.get("/proxy/anthropic/v1/%2E%2E/admin")
        patched = await client.request("PATCH", "/proxy/anthropic/v1/models?limit=1")
    assert "JSON" in anthropic_error(malformed, 400, "invalid_request_error")
    anthropic_error(dots, 400, "invalid_request_error")
    assert "PATCH" in anthropic_error(patched, 404, "not_found_error")
    assert env.standin.received == []


async def test_upstream_errors_are_passed_on_and_recorded(env: Env) -> None:
    """An upstream error answer reaches the sandbox unchanged and is recorded with zero tokens."""
    env.standin.reply = Reply(status=529, error_type="overloaded_error")
    async with env.sandbox_client() as client:
        response = await client.post(MESSAGES, json=BODY)
    anthropic_error(response, 529, "overloaded_error")
    totals = (await env.usage())["totals"]
    assert (totals["requests"], totals["errors"], totals["totalTokens"]) == (1, 1, 0)


async def unreachable_upstream_server(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> Server:
    """A server whose Anthropic base URL is a loopback port nobody listens on."""
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(
        db_url,
        tmp_path / "data",
        anthropic_base_url=f"http://127.0.0.1:{port}",
        anthropic_api_key=REAL_KEY,
    )
    return await start_server(nursery, settings)


async def test_unreachable_upstream_is_502(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A base URL nobody listens on gives 502 in Anthropic's shape, recorded as an error."""
    server = await unreachable_upstream_server(nursery, db_url, tmp_path)
    async with server.client() as owner:
        user, workspace = await owner_of_workspace(owner)
        wid = workspace["id"]
        _, token = await add_sandbox(server, wid, user["id"])
        async with httpx.AsyncClient(base_url=server.url, headers={"x-api-key": token}) as client:
            response = await client.post(MESSAGES, json=BODY)
        anthropic_error(response, 502, "api_error")
        totals = (await owner.get(f"/api/workspaces/{wid}/usage")).json()["totals"]
    assert (totals["requests"], totals["errors"]) == (1, 1)
    server.shutdown.set()


async def test_unreachable_upstream_is_recorded_before_the_answer(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 502 for an unreachable upstream is sent only once its usage row is completed."""
    server = await unreachable_upstream_server(nursery, db_url, tmp_path)
    async with server.client() as owner:
        user, workspace = await owner_of_workspace(owner)
        wid = workspace["id"]
        _, token = await add_sandbox(server, wid, user["id"])
    recorder = server.running.llm.recorder
    record = recorder.record
    finishing, finish = trio.Event(), trio.Event()
    answered: list[httpx.Response] = []

    async def gated(row: dict[str, Any], ticket: Any) -> None:
        finishing.set()
        await finish.wait()
        await record(row, ticket)

    async def call() -> None:
        async with httpx.AsyncClient(base_url=server.url, headers={"x-api-key": token}) as client:
            answered.append(await client.post(MESSAGES, json=BODY))

    monkeypatch.setattr(recorder, "record", gated)
    with trio.fail_after(30):
        async with trio.open_nursery() as calls:
            calls.start_soon(call)
            await finishing.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert answered == []  # the row is still being completed: no answer yet
            finish.set()
    anthropic_error(answered[0], 502, "api_error")
    server.shutdown.set()


async def test_sandbox_subdomains_are_not_proxied(env: Env) -> None:
    """On an oc-{id} host the path belongs to the sandbox, so the LLM proxy stays out of it."""
    host = f"oc-{env.sandbox_id}.localhost:{env.server.port}"
    async with env.sandbox_client(host=host) as client:
        response = await client.post(MESSAGES, json=BODY)
    assert response.status_code != 200
    assert env.standin.received == []


async def test_usage_period_parameters(env: Env) -> None:
    """from/to accept days and RFC 3339 times; a bad value is a 400 naming the field."""
    async with env.sandbox_client() as client:
        assert (await client.post(MESSAGES, json=BODY)).status_code == 200
    today = (await env.usage())["byDay"][0]["day"]
    assert (await env.usage(f"?from={today}&to={today}"))["totals"]["requests"] == 1
    assert (await env.usage("?from=2000-01-01&to=2000-01-02T00:00:00Z"))["totals"]["requests"] == 0
    for query, name in (
        ("?from=yesterday", "from"),
        ("?to=2020-13-01", "to"),
        ("?from=2030-01-01&to=2029-01-01", "from"),
    ):
        response = await env.owner.get(f"/api/workspaces/{env.workspace_id}/usage{query}")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["field"] == name


async def test_quota_admin_api(api_env: Env) -> None:
    """The admin reads, sets and clears overrides; others get 403; bad values 400; unknown 404."""
    url = f"/api/admin/workspaces/{api_env.workspace_id}/quota"
    assert (await api_env.owner.get(url)).json()["rpm"] is None
    put = await api_env.owner.put(url, json={"rpm": 5, "tokensPerDay": 1000})
    assert put.status_code == 200
    assert put.json()["effective"] == {"rpm": 5, "tokensPerDay": 1000}
    assert (await api_env.owner.put(url, json={"rpm": -1})).status_code == 400
    assert (await api_env.owner.put(url, json={"rpm": "many"})).status_code == 400
    assert (await api_env.owner.get("/api/admin/workspaces/nope/quota")).status_code == 404
    async with api_env.server.client() as other:
        await register(other, "someone")
        assert (await other.get(url)).status_code == 403
    assert (await api_env.owner.delete(url)).status_code == 204
    assert (await api_env.owner.get(url)).json()["effective"] == {"rpm": 0, "tokensPerDay": 0}


async def test_hanging_up_mid_stream_cancels_the_upstream_call(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox that disconnects mid-stream closes the upstream call, which is still recorded."""
    release = trio.Event()
    settled = SettledCalls(env.server, monkeypatch)

    async def pace(index: int) -> None:
        if index >= 3:  # hold the stream open after message_start, content_block_start, ping
            await release.wait()

    env.standin.pace = pace
    stream = {"json": BODY | {"stream": True}}
    async with (
        env.sandbox_client() as client,
        client.stream("POST", MESSAGES, **stream) as response,
    ):
        seen = b""
        async for chunk in response.aiter_raw():
            seen += chunk
            if b"event: ping" in seen:
                break
    with trio.fail_after(10):
        await env.standin.hung_up.wait()
        await settled.wait_for(1)  # the row is completed by the handler's shielded cleanup
    totals = (await env.usage())["totals"]
    assert totals["requests"] == 1
    assert totals["inputTokens"] == env.standin.reply.input_tokens  # from message_start
    assert totals["outputTokens"] == 1  # message_start's count; the final delta never came
    assert env.standin.served == []


NASTY_PATHS = [
    MESSAGES,
    "/proxy/anthropic",
    "/proxy/anthropic/",
    "/proxy/anthropic//v1//messages",
    "/proxy/anthropic/v1/%00",
    "/proxy/anthropic/v1/%ff%fe",
    "/proxy/anthropic/%2F%2F",
    "/proxy/anthropic/v1/messages;x=1",
    "/proxy/anthropic/v1/\u00e9t\u00e9",
]
NASTY_BODIES = [
    b"",
    b"null",
    b"[]",
    b'"model"',
    b'{"model": null}',
    b'{"model": {"a": 1}}',
    b"\xff\xfe\x00",
    b'{"model": "claude-sonnet-4-5", "stream": "yes"}',
    b'{"model": "a\\u0000b"}',
    b"{" * 5000,
]


async def test_odd_requests_never_get_a_500(env: Env) -> None:
    """Odd paths, bodies, content types and methods get a forwarded answer or a 4xx, never 5xx."""
    random = __import__("random").Random(5)
    statuses = set()
    async with env.sandbox_client() as client:
        for path in NASTY_PATHS:
            for body in random.sample(NASTY_BODIES, 3):
                for content_type in ("application/json", "text/plain", ""):
                    method = random.choice(["POST", "PUT", "GET", "DELETE", "OPTIONS"])
                    if path == MESSAGES:
                        method = "POST"  # the one route whose bodies are read
                    headers = {"content-type": content_type} if content_type else {}
                    response = await client.request(method, path, content=body, headers=headers)
                    statuses.add(response.status_code)
                    assert response.status_code < 500, (method, path, body[:40], response.text)
                    if response.status_code >= 400:
                        assert response.json()["type"] == "error"
    assert 200 in statuses
    assert 400 in statuses
    assert 404 in statuses
