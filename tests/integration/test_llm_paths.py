"""The LLM proxy on the listener's two paths (proxy/front.py): a plain HTTP/1.1 call is served
by the front door itself and never reaches hypercorn; anything else (a chunked body, a host
that is not the main site) is not taken there; both paths answer alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trio.testing

from tests.support.llm_world import BODY, MESSAGES, Env, open_env
from tests.support.server_paths import PATHS, Answer, Ask, ServerPaths, choose_paths, on_both_paths


@pytest.fixture
def options() -> dict[str, str]:
    return {"llm_max_body": "1KiB", "llm_models": "claude-sonnet-4-5"}


@pytest.fixture
async def env(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, options: dict[str, str]
) -> AsyncIterator[Env]:
    async with open_env(nursery, db_url, tmp_path, options) as world:
        yield world


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> ServerPaths:
    return choose_paths(monkeypatch)


def counting(paths: ServerPaths) -> ServerPaths:
    """`paths` with its counts zeroed: what the world's setup did is not the test's."""
    paths.exchanges = paths.connections = paths.handed_over = 0
    return paths


async def test_plain_calls_are_served_by_the_front_door_alone(env: Env, paths: ServerPaths) -> None:
    """A non-streamed call and a streamed one on one kept-alive connection are both served by
    the front door: no connection is handed to hypercorn, and their usage is recorded."""
    counting(paths)
    async with env.sandbox_client() as client:
        plain = await client.post(MESSAGES, json=BODY)
        async with client.stream("POST", MESSAGES, json=BODY | {"stream": True}) as streamed:
            events = [line async for line in streamed.aiter_lines() if line.startswith("event:")]
    assert plain.status_code == 200, plain.text
    assert plain.json()["usage"] == env.standin.reply.usage()
    assert streamed.status_code == 200
    assert events[0] == "event: message_start"
    assert events[-1] == "event: message_stop"
    assert (paths.connections, paths.exchanges, paths.handed_over) == (1, 2, 0)
    totals = (await env.usage())["totals"]
    assert totals["requests"] == 2
    assert totals["outputTokens"] == 2 * env.standin.reply.output_tokens


async def test_a_chunked_call_goes_to_hypercorn_and_is_served(env: Env, paths: ServerPaths) -> None:
    """A call whose body comes chunked is not the front door's: hypercorn serves it, fully."""
    counting(paths)
    payload = json.dumps(BODY).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 16):
            yield payload[start : start + 16]

    async with env.sandbox_client() as client:
        response = await client.post(MESSAGES, content=chunks())
    assert response.status_code == 200, response.text
    assert (paths.exchanges, paths.handed_over) == (0, 1)
    assert env.standin.received[0].json() == BODY
    assert (await env.usage())["totals"]["requests"] == 1


async def test_an_unknown_host_under_the_base_domain_is_not_the_llm_proxy(
    env: Env, paths: ServerPaths
) -> None:
    """The LLM path on a name under the base domain that is neither the main site nor a
    sandbox is left to hypercorn, which answers 404 as before; nothing goes upstream."""
    counting(paths)
    async with env.sandbox_client(host=f"www.localhost:{env.server.port}") as client:
        response = await client.post(MESSAGES, json=BODY)
    assert response.status_code == 404
    assert (paths.exchanges, paths.handed_over) == (0, 1)
    assert env.standin.received == []


def post(body: bytes, **headers: str) -> Ask:
    async def ask(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(MESSAGES, content=body, headers=headers)

    return ask


def streamed() -> Ask:
    async def ask(client: httpx.AsyncClient) -> httpx.Response:
        async with client.stream("POST", MESSAGES, json=BODY | {"stream": True}) as response:
            await response.aread()
        return response

    return ask


def get(path: str) -> Ask:
    async def ask(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(path)

    return ask


def unframed(answer: Answer) -> Answer:
    """`answer` without its framing field: an answer the front door holds whole when it ends
    (a small non-streamed one) goes out sized, where hypercorn chunks it."""
    headers = [
        (n, v) for n, v in answer.headers if n not in ("content-length", "transfer-encoding")
    ]
    return Answer(answer.status, headers, answer.body)


async def test_answers_and_refusals_are_the_same_on_both_paths(
    env: Env, paths: ServerPaths
) -> None:
    """A call, a streamed call and each kind of refusal (no token, unknown token, a route not
    forwarded, malformed JSON, a model not allowed, a body over the limit) get the same
    status, headers and body from the front door and from hypercorn (but for framing)."""
    body = json.dumps(BODY).encode()
    json_type = {"content-type": "application/json"}
    cases: list[tuple[int, str | None, Ask]] = [
        (200, None, post(body, **json_type)),
        (200, None, streamed()),
        (401, "", post(body)),
        (401, "sk-made-up", post(body)),
        (404, None, get("/proxy/anthropic/v1/files")),
        (400, None, post(b'{"model": ', **json_type)),
        (403, None, post(json.dumps(BODY | {"model": "claude-opus-4-1"}).encode())),
        (413, None, post(json.dumps(BODY | {"pad": "x" * 2048}).encode())),
    ]
    for status, token, ask in cases:
        answers = await on_both_paths(paths, partial(env.sandbox_client, token), ask)
        assert unframed(answers["fast"]) == unframed(answers["hypercorn"]), status
        assert answers["fast"].status == status, answers["fast"].body
    stand_in = env.standin.served
    assert len(stand_in) == 4  # each 200 case, once per path
    totals = (await env.usage())["totals"]
    assert totals["requests"] == 4
    assert totals["inputTokens"] == sum(s.usage["input_tokens"] for s in stand_in)


async def test_an_oversized_declared_body_is_refused_before_it_is_sent(
    env: Env, paths: ServerPaths
) -> None:
    """A head declaring a body over `llm_max_body` is answered 413 with `Connection: close` at
    once on both paths, without waiting for the body (it never comes)."""
    counting(paths)
    for mode in PATHS:
        paths.mode = mode
        client = h11.Connection(h11.CLIENT)
        head = h11.Request(
            method="POST",
            target=MESSAGES,
            headers=[
                ("host", f"127.0.0.1:{env.server.port}"),
                ("x-api-key", env.token),
                ("content-type", "application/json"),
                ("content-length", "1000000"),
            ],
        )
        stream = await trio.open_tcp_stream("127.0.0.1", env.server.port)
        async with stream:
            await stream.send_all(client.send(head) or b"")
            with trio.fail_after(10):
                while not isinstance(event := client.next_event(), h11.Response):
                    assert event is h11.NEED_DATA
                    client.receive_data(await stream.receive_some(65536))
        assert event.status_code == 413, mode
        assert (b"connection", b"close") in event.headers, mode
    assert paths.exchanges == 1
    assert env.standin.received == []


async def raw_call(stream: trio.SocketStream, port: int, token: str) -> h11.Response:
    """One non-streamed call on a raw connection; its answer read whole."""
    client = h11.Connection(h11.CLIENT)
    body = json.dumps(BODY).encode()
    head = h11.Request(
        method="POST",
        target=MESSAGES,
        headers=[
            ("host", f"127.0.0.1:{port}"),
            ("x-api-key", token),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ],
    )
    await stream.send_all((client.send(head) or b"") + (client.send(h11.Data(data=body)) or b""))
    client.send(h11.EndOfMessage())
    response = None
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
    assert response is not None
    return response


async def test_a_call_while_the_server_drains_says_close(env: Env, paths: ServerPaths) -> None:
    """On a kept-alive connection, a call sent once the server drains is still served by the
    front door, with `Connection: close`, and the connection ends after it."""
    counting(paths)
    port = env.server.port
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        first = await raw_call(stream, port, env.token)
        env.server.shutdown.set()
        await trio.testing.wait_all_tasks_blocked()
        second = await raw_call(stream, port, env.token)
        with trio.fail_after(10):
            rest = await stream.receive_some(65536)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (b"connection", b"close") not in first.headers
    assert (b"connection", b"close") in second.headers
    assert rest == b""
    assert (paths.exchanges, paths.handed_over) == (2, 0)
