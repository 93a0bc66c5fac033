"""Docker sandboxes' previews: an app in a container's network answers at its preview endpoint
(the container's address), and is listed among its listening ports (real Docker daemon)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from agentserver.sandboxes.base import Endpoint
from agentserver.sandboxes.docker import DockerBackend
from tests.integration.test_docker_backend import Harness, harness, make_spec

pytestmark = pytest.mark.docker
__all__ = ["harness"]  # the Docker backend fixture, shared with test_docker_backend
APP = (Path(__file__).parents[1] / "support" / "preview_app.py").read_text()
PORT = 3000


async def first_line(stream: trio.abc.ReceiveStream) -> bytes:
    """What a process printed up to its first newline."""
    data = b""
    while b"\n" not in data and (chunk := await stream.receive_some(100)):
        data += chunk
    return data.split(b"\n")[0]


@asynccontextmanager
async def app_in(h: Harness, sandbox_id: str, name: str) -> AsyncIterator[None]:
    """preview_app.py listening on PORT in the container's network namespace (the image has
    no Python: the host's runs there, entered with nsenter), until the block ends."""
    container = await h.container(sandbox_id)
    pid = container.attrs["State"]["Pid"]
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", "/usr/bin/python3", "-c", APP, name]
    process = await trio.lowlevel.open_process([*argv, str(PORT)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert await first_line(process.stdout) == b"ready"
        yield
    finally:
        process.kill()
        await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def hello(endpoint: Endpoint) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        answer = await http.get(f"http://{endpoint.host}:{endpoint.port}/hello")
    assert answer.status_code == 200
    return answer.text


def preview(backend: DockerBackend, sandbox_id: str, agent: Endpoint) -> Endpoint:
    endpoint = backend.preview_endpoint(sandbox_id, agent, PORT)
    assert endpoint is not None
    return endpoint


async def test_an_app_in_the_container_answers_at_its_preview_endpoint(harness: Harness) -> None:
    """GET, server-sent events and a WebSocket echo reach the app at the container's address;
    the listening ports list it and leave the agent's port out; the agent's port is no
    preview."""
    spec = make_spec()
    agent = await harness.backend.create(spec)
    # opencode may listen on more than its own port (its own helpers): those stay listed.
    before = await harness.backend.listening_ports(spec.id)
    assert before is not None
    assert agent.port not in before
    assert PORT not in before
    async with app_in(harness, spec.id, "one"):
        endpoint = preview(harness.backend, spec.id, agent)
        assert endpoint == Endpoint(agent.host, PORT)
        assert await hello(endpoint) == "hello from one"
        async with (
            httpx.AsyncClient(trust_env=False, timeout=10) as http,
            http.stream("GET", f"http://{endpoint.host}:{PORT}/events") as events,
        ):
            lines = [line async for line in events.aiter_lines() if line]
        assert lines == ["data: one 0", "data: one 1", "data: one 2"]
        async with open_websocket_url(f"ws://{endpoint.host}:{PORT}/echo") as ws:
            await ws.send_message("ping")
            assert await ws.get_message() == "ping"
        assert await harness.backend.listening_ports(spec.id) == sorted([*before, PORT])
    assert harness.backend.preview_endpoint(spec.id, agent, agent.port) is None


async def test_two_containers_on_the_same_port_are_different_previews(harness: Harness) -> None:
    """Two sandboxes both listen on the same port; each preview reaches its own app."""
    one, two = make_spec(), make_spec()
    agents = [await harness.backend.create(spec) for spec in (one, two)]
    async with app_in(harness, one.id, "one"), app_in(harness, two.id, "two"):
        first = preview(harness.backend, one.id, agents[0])
        second = preview(harness.backend, two.id, agents[1])
        assert first != second
        assert await hello(first) == "hello from one"
        assert await hello(second) == "hello from two"


async def test_a_stopped_container_lists_no_ports(harness: Harness) -> None:
    """A paused sandbox (stopped container) cannot tell its ports: None, not an error."""
    spec = make_spec()
    await harness.backend.create(spec)
    await harness.backend.pause(spec.id)
    assert await harness.backend.listening_ports(spec.id) is None
    assert await harness.backend.listening_ports("no-such-sandbox") is None
