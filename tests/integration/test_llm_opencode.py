"""End to end: real opencode in a process sandbox asks the stand-in through the LLM proxy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.conftest import Server, make_settings, register, start_server
from tests.support.anthropic import AnthropicStandIn, Reply, open_anthropic
from tests.support.sandbox_login import sandbox_cookie
from tests.support.sandboxes import reachable_data_dir

REAL_KEY = "sk-ant-e2e-real-key"
REPLY = Reply(
    text="Hello from the stand-in, through the proxy.",
    input_tokens=1234,
    output_tokens=56,
    cache_creation_input_tokens=78,
    cache_read_input_tokens=910,
)
BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "x"}],
}
PROMPT = {
    "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4-5"},
    "parts": [{"type": "text", "text": "hi"}],
}

pytestmark = pytest.mark.opencode


async def wait_running(owner: httpx.AsyncClient, sandbox_id: str) -> dict[str, Any]:
    """Poll the sandbox until opencode is up (an external process: bounded, small gaps)."""
    with trio.fail_after(120):
        while True:
            shown = (await owner.get(f"/api/sandboxes/{sandbox_id}")).json()
            if shown["status"] in ("running", "failed"):
                return dict(shown)
            await trio.sleep(0.2)


async def open_subdomain(
    server: Server, owner: httpx.AsyncClient, sandbox_id: str
) -> httpx.AsyncClient:
    """Go through /open and the ticket like a browser; a client for oc-{id} with its cookie."""
    opened = await owner.get(f"/api/sandboxes/{sandbox_id}/open")
    assert opened.status_code == 302, opened.text
    host = urlsplit(opened.headers["location"]).netloc
    headers = {"Host": host, "Origin": f"http://{host}"}
    sub = httpx.AsyncClient(base_url=server.url, headers=headers, timeout=180)
    sub.headers["Cookie"] = f"agentserver_sandbox={await sandbox_cookie(owner, sub, sandbox_id)}"
    return sub


def reply_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [
        part.get("text", "")
        for message in messages
        if message["info"]["role"] == "assistant"
        for part in message["parts"]
        if part.get("type") == "text"
    ]


def sandbox_environment(server: Server, sandbox_id: str) -> dict[str, str]:
    """The environment the sandbox's process was started with (Linux /proc)."""
    pid = server.deps.sandboxes.backend.pid(sandbox_id)
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode("utf-8", "replace") for k, _, v in pairs}


def served_totals(standin: AnthropicStandIn) -> dict[str, int]:
    names = (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )
    return {name: sum(s.usage[name] for s in standin.served) for name in names}


async def test_opencode_prompt_through_the_proxy(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """opencode's answer comes from the stand-in, with the real key, and usage matches exactly."""
    standin = await open_anthropic(nursery, REPLY)
    settings = make_settings(
        db_url,
        reachable_data_dir(tmp_path / "data"),
        anthropic_base_url=standin.url,
        anthropic_api_key=REAL_KEY,
        opencode_bin=opencode_bin,
        backend="process",
    )
    server = await start_server(nursery, settings)
    async with server.client() as owner:
        await register(owner, "owner")
        wid = (await owner.post("/api/workspaces", json={"name": "e2e"})).json()["id"]
        created = await owner.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "llm", "type": "opencode"}
        )
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        assert (await wait_running(owner, sid))["status"] == "running"

        sub = await open_subdomain(server, owner, sid)
        try:
            session = await sub.post("/session", json={})
            assert session.status_code == 200, session.text
            session_id = session.json()["id"]
            answer = await sub.post(f"/session/{session_id}/message", json=PROMPT)
            assert answer.status_code == 200, answer.text
            messages = (await sub.get(f"/session/{session_id}/message")).json()
        finally:
            await sub.aclose()
        assert REPLY.text in reply_texts(messages)

        assert standin.received, "opencode never reached the stand-in"
        for request in standin.received:
            assert request.path == "/v1/messages"
            assert request.header("x-api-key") == REAL_KEY
        assert any(s.streaming for s in standin.served)

        usage = (await owner.get(f"/api/workspaces/{wid}/usage")).json()
        want = served_totals(standin)
        totals = usage["totals"]
        assert totals["requests"] == len(standin.served)
        assert totals["inputTokens"] == want["input_tokens"]
        assert totals["outputTokens"] == want["output_tokens"]
        assert totals["cacheCreationInputTokens"] == want["cache_creation_input_tokens"]
        assert totals["cacheReadInputTokens"] == want["cache_read_input_tokens"]
        assert [s["sandboxId"] for s in usage["bySandbox"]] == [sid]

        # The sandbox holds only its proxy token; deleting the sandbox kills that token.
        environment = sandbox_environment(server, sid)
        assert not any(REAL_KEY in value for value in environment.values())
        config = json.loads(environment["OPENCODE_CONFIG_CONTENT"])
        options = config["provider"]["anthropic"]["options"]
        assert options["baseURL"] == f"{server.deps.settings.llm_proxy_url}/v1"
        proxy = httpx.AsyncClient(
            base_url=options["baseURL"], headers={"x-api-key": options["apiKey"]}
        )
        async with proxy:
            assert (await proxy.post("/messages", json=BODY)).status_code == 200
            assert (await owner.delete(f"/api/sandboxes/{sid}")).status_code == 204
            revoked = await proxy.post("/messages", json=BODY)
        assert revoked.status_code == 401
        assert revoked.json()["error"]["type"] == "authentication_error"
    server.shutdown.set()
