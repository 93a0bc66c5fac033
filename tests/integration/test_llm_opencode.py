"""End to end: real opencode in a process sandbox asks the stand-in through the LLM proxy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.anthropic import AnthropicStandIn, Reply, open_anthropic
from tests.support.sandbox_login import sandbox_client
from tests.support.sandboxes import reachable_data_dir
from tests.support.workspace_events import open_events

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


async def open_subdomain(
    server: Server, owner: httpx.AsyncClient, sandbox_id: str
) -> httpx.AsyncClient:
    """Go through /open and the ticket like a browser; a client for oc-{id} with its cookie."""
    return await sandbox_client(server.url, owner, sandbox_id, origin=True, timeout=180)


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
        wid = (await owner_of_workspace(owner, workspace="e2e"))[1]["id"]
        events = await open_events(nursery, owner, wid)
        created = await owner.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "llm", "type": "opencode"}
        )
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        assert (await events.until(sid, "running", "failed"))["status"] == "running"
        events.close()

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
        # On a network namespace of its own the sandbox reaches the proxy through its relay.
        proxy_url = server.deps.settings.llm_proxy_url
        networks = server.deps.sandboxes.backend.networks
        net = networks.get(sid) if networks is not None else None
        relayed = proxy_url if net is None else networks.llm_base_url(net, proxy_url)
        assert options["baseURL"] == f"{relayed}/v1"
        proxy = httpx.AsyncClient(
            base_url=f"{proxy_url}/v1", headers={"x-api-key": options["apiKey"]}
        )
        async with proxy:
            assert (await proxy.post("/messages", json=BODY)).status_code == 200
            assert (await owner.delete(f"/api/sandboxes/{sid}")).status_code == 204
            revoked = await proxy.post("/messages", json=BODY)
        assert revoked.status_code == 401
        assert revoked.json()["error"]["type"] == "authentication_error"
    server.shutdown.set()
