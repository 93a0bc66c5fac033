"""The readiness probe as the backends send it (sandboxes/readiness.py, docker.py), against a
local stand-in agent that refuses requests without its credentials, as opencode and OpenClaw do."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import httpx
import pytest
import trio

from agentserver.errors import BackendError
from agentserver.kinds import kind_of
from agentserver.models import SandboxType
from agentserver.sandboxes import docker as docker_module
from agentserver.sandboxes.base import Endpoint, SandboxSpec
from agentserver.sandboxes.docker import DockerBackend
from agentserver.sandboxes.readiness import answers
from agentserver.settings import build_settings

SECRET = "agent-secret"
STARTED = 1.0  # when the container started (its output is followed from then on)


@dataclass
class StandIn:
    """An HTTP/1.1 agent on 127.0.0.1: answers `rule(headers)` and keeps what it was sent."""

    rule: Callable[[dict[str, str]], int]
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        first, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = first.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            body += await stream.receive_some(65536)
        self.seen.append((method, path, headers, body))
        status = self.rule(headers)
        await stream.send_all(
            f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
        )
        await stream.aclose()


async def stand_in(nursery: trio.Nursery, sandbox_type: SandboxType, answer: int) -> StandIn:
    """An agent that answers `answer` to requests with the kind's credentials, 401 to others."""
    wanted = kind_of(sandbox_type).credentials.header(SECRET)
    agent = StandIn(lambda headers: answer if headers.get("authorization") == wanted else 401)
    listeners = await nursery.start(partial(trio.serve_tcp, agent.handle, 0, host="127.0.0.1"))
    agent.port = listeners[0].socket.getsockname()[1]
    return agent


class QuietOutput:
    """A followed log stream of a container that prints nothing: blocks until closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self) -> QuietOutput:
        return self

    def __next__(self) -> bytes:
        self.closed.wait()
        raise StopIteration

    def close(self) -> None:
        self.closed.set()


class RunningContainers:
    """Just enough of a Docker client for `_wait_ready`: every container is running."""

    class containers:  # named as the docker client names it
        @staticmethod
        def get(name: str) -> Any:
            return RunningContainer()

    class api:  # the low-level client, which follows a container's output
        @staticmethod
        def logs(name: str, **options: Any) -> QuietOutput:
            return QuietOutput()


class RunningContainer:
    attrs: ClassVar[dict[str, Any]] = {"State": {"Running": True}}


def spec(sandbox_type: SandboxType) -> SandboxSpec:
    return SandboxSpec("abc123", "wsp456", sandbox_type, SECRET, "http://x", "proxy-token")


def docker_backend() -> DockerBackend:
    return DockerBackend(RunningContainers(), build_settings({"backend": "docker"}, {}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sandbox_type", "answer"), [(SandboxType.OPENCODE, 200), (SandboxType.OPENCLAW, 400)]
)
async def test_the_docker_probe_authenticates_every_kind(
    nursery: trio.Nursery, sandbox_type: SandboxType, answer: int
) -> None:
    """Regression: Docker's probe sent OpenClaw no token. Now it sends the kind's request with
    the kind's credentials, and an agent that refuses anything else (401) counts as ready."""
    agent = await stand_in(nursery, sandbox_type, answer)
    await docker_backend()._wait_ready(
        spec(sandbox_type), Endpoint("127.0.0.1", agent.port), STARTED
    )
    kind = kind_of(sandbox_type)
    method, path, headers, body = agent.seen[-1]
    assert (method, path, body) == (kind.readiness.method, kind.readiness.path, kind.readiness.body)
    assert headers["authorization"] == kind.credentials.header(SECRET)


async def test_docker_takes_a_refusal_as_not_ready(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: Docker took any answer below 500 but 401 as ready, a 403 too. An agent
    that refuses the credentials never becomes ready: the start fails when the wait ends."""
    monkeypatch.setattr(docker_module, "READY_TIMEOUT", 0.5)
    agent = await stand_in(nursery, SandboxType.OPENCODE, 403)
    with pytest.raises(BackendError, match="did not answer"):
        await docker_backend()._wait_ready(
            spec(SandboxType.OPENCODE), Endpoint("127.0.0.1", agent.port), STARTED
        )
    assert len(agent.seen) > 1  # it kept asking


@pytest.mark.parametrize("sandbox_type", [SandboxType.OPENCODE, SandboxType.OPENCLAW])
async def test_the_shared_probe_is_ready_only_with_the_right_secret(
    nursery: trio.Nursery, sandbox_type: SandboxType
) -> None:
    """The probe both backends send proves the credentials: the right secret is ready, a
    wrong one (which the agent refuses) is not, and nothing listening is not."""
    agent = await stand_in(nursery, sandbox_type, 200)
    url = f"http://127.0.0.1:{agent.port}"
    async with httpx.AsyncClient(trust_env=False) as client:
        assert await answers(client, sandbox_type, url, SECRET)
        assert not await answers(client, sandbox_type, url, "wrong")
        with trio.socket.socket() as unused:
            await unused.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{unused.getsockname()[1]}"
            assert not await answers(client, sandbox_type, closed, SECRET)
