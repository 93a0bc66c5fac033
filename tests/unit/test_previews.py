"""Previews' pure rules and small parts: which ports are refused, the shared-ports header, the
port on the tunnel's wire, a preview's headers, the fake backend's ports and the watcher."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import trio

from agentserver.kinds import (
    AGENT_PORTS,
    MAX_SHARED_PORTS,
    parse_shared_ports,
    preview_refusal,
)
from agentserver.models import Sandbox
from agentserver.proxy import pages
from agentserver.proxy.headers import Forwarding, request_headers, websocket_headers
from agentserver.proxy.previews import port_refusal
from agentserver.sandboxes.base import Endpoint
from agentserver.sandboxes.events import WorkspaceEvents
from agentserver.sandboxes.fake import NOWHERE, FakeBackend
from agentserver.sandboxes.previews import PreviewWatcher
from agentserver.tunnel import frames
from agentserver.tunnel.connection import RequestReceived
from agentserver.tunnel.frames import RequestOpen, decode, encode

FWD = Forwarding(client_ip="10.0.0.7", proto="https", host=b"p5173-abc.example.com")


@pytest.mark.parametrize(
    ("port", "agent_port", "expected"),
    [
        (1024, None, None),
        (5173, None, None),
        (65535, None, None),
        (1023, None, "out_of_range"),
        (80, None, "out_of_range"),
        (0, None, "out_of_range"),
        (65536, None, "out_of_range"),
        (99999, None, "out_of_range"),
        (4096, None, "agent_port"),  # opencode's
        (18789, None, "agent_port"),  # OpenClaw's
        (20001, 20001, "agent_port"),  # where this sandbox's agent listens
        (20001, 20002, None),
    ],
)
def test_preview_refusal(port: int, agent_port: int | None, expected: str | None) -> None:
    """Ports outside 1024-65535 and every agent's own port are never previews."""
    assert preview_refusal(port, agent_port) == expected


def test_every_refusal_has_its_page() -> None:
    """The proxy answers each refused port with a page saying which rule refused it."""
    assert port_refusal(80) is pages.PORT_OUT_OF_RANGE
    assert port_refusal(4096) is pages.PORT_OF_AGENT
    assert port_refusal(5173) is None
    assert {4096, 18789} == AGENT_PORTS


def test_the_not_listening_page_names_the_port_and_reloads() -> None:
    """A port nothing listens on gets a page in words, with the port, that reloads itself."""
    page = pages.not_listening(5173)
    assert "Nothing is listening on port 5173 in this sandbox yet" in page.message
    assert page.refresh
    status, headers, body = pages.answer(page, "GET", [(b"accept", b"text/html")])
    assert status == 502
    assert b"port 5173" in body
    assert any(n == b"retry-after" for n, _ in headers)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5173,3000", (3000, 5173)),
        (" 5173 , 5173,3000 ", (3000, 5173)),
        ("80,4096,99999,abc,,-1,5000", (5000,)),
        ("", ()),
        (None, ()),
        ("٣٠٠٠", ()),  # non-ASCII digits are no port
    ],
)
def test_parse_shared_ports(text: str | None, expected: tuple[int, ...]) -> None:
    """The agent's shared-ports header gives only ports a preview may reach, sorted, once."""
    assert parse_shared_ports(text) == expected


def test_shared_ports_are_bounded() -> None:
    """A header listing thousands of ports keeps at most MAX_SHARED_PORTS of them."""
    many = ",".join(str(p) for p in range(2000, 12000))
    assert len(parse_shared_ports(many)) == MAX_SHARED_PORTS


def test_a_request_frame_carries_the_port_only_for_previews() -> None:
    """The stream-open message names the port only for a preview; one without it (as every
    agent before previews sent and read) decodes with no port."""
    plain = RequestOpen(1, "GET", "/", ())
    header = json.loads(encode(plain)[4:])
    assert "port" not in header
    assert decode(encode(plain)).port is None
    preview = RequestOpen(1, "GET", "/", (), port=5173)
    assert json.loads(encode(preview)[4:])["port"] == 5173
    assert decode(encode(preview)) == preview


@pytest.mark.parametrize("bad", [0, 65536, "5173", True, 1.5])
def test_a_bad_port_on_the_wire_is_a_protocol_error(bad: object) -> None:
    """A port that is no TCP port fails decoding like any other malformed field."""
    header = {"type": "request", "id": 1, "method": "GET", "target": "/", "headers": []}
    raw = json.dumps({**header, "port": bad}).encode()
    with pytest.raises(frames.ProtocolError):
        decode(len(raw).to_bytes(4, "big") + raw)


def test_request_received_defaults_to_no_port() -> None:
    """Events built without a port (the agent's opencode requests) have none."""
    assert RequestReceived(1, "GET", "/", (), False, False, ()).port is None


def test_a_preview_request_carries_none_of_our_credentials() -> None:
    """Upstream to a dev server: our cookies go, nothing of the agent's is injected, and the
    app's own Authorization and cookies pass."""
    incoming = [
        (b"cookie", b"agentserver_sandbox=tok; app=1; agentserver_bind=n"),
        (b"authorization", b"Bearer app-token"),
        (b"x-forwarded-host", b"evil"),
    ]
    for build in (request_headers, websocket_headers):
        out = build(incoming, None, FWD)
        assert (b"cookie", b"app=1") in out
        assert [v for n, v in out if n == b"authorization"] == [b"Bearer app-token"]
        assert [v for n, v in out if n == b"x-forwarded-host"] == [FWD.host]
        assert not any(b"agentserver" in v for n, v in out if n == b"cookie")


async def test_the_fake_backend_serves_the_ports_a_test_listens_on() -> None:
    """The fake's previews go where the test says a port is served, a port nothing listens on
    goes nowhere (connection refused), and a fake without previews refuses them."""
    fake = FakeBackend()
    agent = Endpoint("127.0.0.1", 20000)
    assert await fake.listening_ports("s1") == []
    fake.listen("s1", 5173, Endpoint("127.0.0.1", 4321))
    assert await fake.listening_ports("s1") == [5173]
    assert fake.preview_endpoint("s1", agent, 5173) == Endpoint("127.0.0.1", 4321)
    assert fake.preview_endpoint("s2", agent, 5173) == NOWHERE
    fake.stop_listening("s1", 5173)
    assert await fake.listening_ports("s1") == []
    fake.previews = False
    assert fake.preview_endpoint("s1", agent, 5173) is None
    assert await fake.listening_ports("s1") is None


@dataclass
class Listed:
    """Stands in for the lifecycle service: the watched workspace's sandboxes."""

    backend: FakeBackend
    sandboxes: list[Sandbox] = field(default_factory=list)

    async def list(self, workspace_id: str) -> list[Sandbox]:
        await trio.lowlevel.checkpoint()
        return self.sandboxes


def running(sandbox_id: str) -> Sandbox:
    now = datetime.now(UTC)
    return Sandbox(
        id=sandbox_id,
        workspace_id="w1",
        name=sandbox_id,
        type="opencode",
        status="running",
        status_reason=None,
        created_by=None,
        created_at=now,
        updated_at=now,
        last_activity_at=now,
        paused_at=None,
        agent_secret="s",
        endpoint_host="127.0.0.1",
        endpoint_port=20000,
        backend_ref=None,
        last_heartbeat_at=None,
    )


async def test_the_watcher_tells_a_watched_workspace_when_ports_change() -> None:
    """A `previews` event goes out when a running sandbox starts or stops serving a port, only
    while someone watches its workspace, and never for a poll that saw no change."""
    fake = FakeBackend()
    events = WorkspaceEvents()
    service = Listed(fake, [running("s1")])
    watcher = PreviewWatcher(service, events)
    fake.listen("s1", 5173, Endpoint("127.0.0.1", 1))
    assert await watcher.check() == 0  # nobody watches
    with events.subscribe("w1") as sub:
        assert await watcher.check() == 1  # first seen serving 5173
        assert sub.inbox.receive_nowait() == {
            "type": "previews",
            "previews": {"sandboxId": "s1"},
        }
        assert await watcher.check() == 0
        fake.listen("s1", 4096, Endpoint("127.0.0.1", 1))  # the agent's port: never listed
        assert await watcher.check() == 0
        fake.stop_listening("s1", 5173)
        assert await watcher.check() == 1
