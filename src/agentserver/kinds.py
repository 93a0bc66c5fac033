"""What each kind of agent needs, declared once as a table (pure: no I/O).

A sandbox runs one kind of agent: opencode or the OpenClaw gateway (a local sandbox runs
opencode on its owner's machine). Everything that differs between them is a row of `KINDS`:
the subdomain prefix it is served at, its port, how the proxy and the backends authenticate
to it, the request that proves it is ready, its command-line arguments, its environment and
configuration (the LLM proxy as its Anthropic provider), and the settings that name its
program and image. Every backend, the subdomain proxy, the routing, the API and the
`agent connect` client (for the local opencode) read this table; none keeps its own copy.
It sits below every layer that needs it (pyproject's import-linter layers).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from agentserver.models import SandboxType

Name = Literal["opencode", "openclaw"]
Bind = Literal["loopback", "all"]  # the agent listens on 127.0.0.1, or on every interface


@dataclass(frozen=True, slots=True)
class Credentials:
    """How a request authenticates to the agent with its secret (the sandbox's agent_secret)."""

    scheme: Literal["Basic", "Bearer"]
    user: str = ""  # Basic auth's fixed user name

    def header(self, secret: str) -> str:
        """The `Authorization` value that carries `secret`."""
        if self.scheme == "Basic":
            return "Basic " + base64.b64encode(f"{self.user}:{secret}".encode()).decode()
        return f"Bearer {secret}"


@dataclass(frozen=True, slots=True)
class Readiness:
    """The request that proves the agent is up: one it refuses without its credentials
    (401), so an answer that `answers_with_credentials` accepts proves they work."""

    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None


def answers_with_credentials(status: int) -> bool:
    """The one readiness rule for every kind and backend: the agent answered (no 5xx, which
    a starting or broken agent gives) and took its credentials (no 401 or 403)."""
    return status < 500 and status not in (401, 403)


@dataclass(frozen=True, slots=True)
class LlmAccess:
    """Where the agent reaches the LLM proxy: its base URL as the sandbox sees it, and the
    API key: the proxy token itself or a reference the agent resolves to it (`{file:…}`)."""

    base_url: str
    api_key: str


@dataclass(frozen=True, slots=True)
class AgentKind:
    """One kind of agent: everything a backend, the proxy or the API needs to know of it."""

    name: Name
    title: str  # as users read it
    prefix: str  # subdomain label prefix: `{prefix}{sandbox id}.{base domain}`
    port: int  # where it listens inside a container (the process backend picks a free one)
    credentials: Credentials
    readiness: Readiness
    # Its command-line arguments after the program, listening as `Bind` says on the port.
    arguments: Callable[[Bind, int], list[str]]
    # Its own variables: its secret and, for opencode, its whole configuration.
    environment: Callable[[str, LlmAccess], dict[str, str]]
    # A configuration file under its HOME (path relative to HOME, and its text), if any.
    config_path: str | None
    config: Callable[[LlmAccess], str] | None
    program_setting: str  # the Settings field naming its program (process backend)
    program_option: str  # how an operator sets it
    # It needs a newer Node than the machine's: the `node` npm installed next to the program
    # (node_modules/.bin) comes first on its PATH.
    node_beside: bool
    image_setting: str  # the Settings field naming its image (Docker backend)
    image_option: str


# The Anthropic models OpenClaw offers (its config lists them; opencode knows its own).
OPENCLAW_MODELS: tuple[Mapping[str, str], ...] = (
    {"id": "claude-opus-4-6", "name": "Claude Opus 4.6"},
    {"id": "claude-opus-4-5", "name": "Claude Opus 4.5"},
    {"id": "claude-sonnet-4-6", "name": "Claude Sonnet 4.6"},
    {"id": "claude-sonnet-4-5", "name": "Claude Sonnet 4.5"},
    {"id": "claude-haiku-4-5", "name": "Claude Haiku 4.5"},
)


def opencode_config(llm: LlmAccess) -> str:
    """OPENCODE_CONFIG_CONTENT: Anthropic through the LLM proxy with the sandbox's key."""
    # opencode's Anthropic SDK appends /messages to the base URL, so it ends in /v1.
    options = {"baseURL": f"{llm.base_url.rstrip('/')}/v1", "apiKey": llm.api_key}
    return json.dumps({"provider": {"anthropic": {"options": options}}})


def opencode_environment(secret: str, llm: LlmAccess) -> dict[str, str]:
    return {"OPENCODE_SERVER_PASSWORD": secret, "OPENCODE_CONFIG_CONTENT": opencode_config(llm)}


def opencode_arguments(bind: Bind, port: int) -> list[str]:
    host = "127.0.0.1" if bind == "loopback" else "0.0.0.0"  # inside a container
    return ["serve", "--hostname", host, "--port", str(port)]


def openclaw_config(llm: LlmAccess) -> str:
    """OpenClaw's openclaw.json: a local gateway behind our proxy, Anthropic through the LLM
    proxy."""
    # The subdomain proxy authenticates every browser request before it reaches the gateway,
    # which cannot pair devices or check origins through a reverse proxy.
    ui = {"dangerouslyAllowHostHeaderOriginFallback": True, "dangerouslyDisableDeviceAuth": True}
    # OpenClaw's Anthropic client appends /v1/messages itself.
    provider = {
        "baseUrl": llm.base_url.rstrip("/"),
        "apiKey": llm.api_key,
        "api": "anthropic-messages",
        "models": [dict(model) for model in OPENCLAW_MODELS],
    }
    return json.dumps(
        {
            "gateway": {"mode": "local", "controlUi": ui},
            "models": {"providers": {"anthropic": provider}},
        }
    )


def openclaw_environment(secret: str, llm: LlmAccess) -> dict[str, str]:
    # Its LLM settings are in its config file, which holds the proxy token.
    return {"OPENCLAW_GATEWAY_TOKEN": secret}


def openclaw_arguments(bind: Bind, port: int) -> list[str]:
    mode = "loopback" if bind == "loopback" else "lan"
    return [
        *("gateway", "run", "--allow-unconfigured", "--bind", mode),
        *("--port", str(port), "--auth", "token"),
    ]


OPENCODE = AgentKind(
    name="opencode",
    title="opencode",
    prefix="oc-",
    port=4096,
    credentials=Credentials("Basic", user="opencode"),
    # opencode checks its password on every path.
    readiness=Readiness("GET", "/"),
    arguments=opencode_arguments,
    environment=opencode_environment,
    config_path=None,
    config=None,
    program_setting="opencode_bin",
    program_option="--opencode-bin / OPENCODE_BIN",
    node_beside=False,
    image_setting="agent_image",
    image_option="AGENT_IMAGE",
)

OPENCLAW = AgentKind(
    name="openclaw",
    title="OpenClaw",
    prefix="claw-",
    port=18789,
    credentials=Credentials("Bearer"),
    # Its pages and /healthz answer anyone; the tool API checks the token first, and an
    # empty call is refused (400) without doing anything.
    readiness=Readiness("POST", "/tools/invoke", b"{}", "application/json"),
    arguments=openclaw_arguments,
    environment=openclaw_environment,
    config_path=".openclaw/openclaw.json",
    config=openclaw_config,
    program_setting="openclaw_bin",
    program_option="--openclaw-bin / OPENCLAW_BIN",
    node_beside=True,  # Node 24+
    image_setting="openclaw_image",
    image_option="OPENCLAW_IMAGE",
)

# The table. A local sandbox is opencode on its owner's machine, reached through the tunnel.
KINDS: Mapping[SandboxType, AgentKind] = MappingProxyType(
    {SandboxType.OPENCODE: OPENCODE, SandboxType.OPENCLAW: OPENCLAW, SandboxType.LOCAL: OPENCODE}
)
# Each kind by its name (the routing's subdomain kinds) and by its subdomain prefix.
BY_NAME: Mapping[Name, AgentKind] = MappingProxyType({k.name: k for k in KINDS.values()})
BY_PREFIX: Mapping[str, AgentKind] = MappingProxyType({k.prefix: k for k in KINDS.values()})


def kind_of(sandbox_type: str) -> AgentKind:
    """The row of a sandbox type (a `SandboxType` or its value; ValueError if unknown)."""
    return KINDS[SandboxType(sandbox_type)]


def types_of(name: Name) -> frozenset[SandboxType]:
    """The sandbox types served as the kind `name` (its subdomain reaches exactly these)."""
    return frozenset(t for t, kind in KINDS.items() if kind.name == name)


@functools.lru_cache(maxsize=1024)  # one per running sandbox: the proxy asks on every request
def authorization(sandbox_type: str, secret: str) -> bytes:
    """The `Authorization` value that reaches a sandbox's agent with its secret."""
    return kind_of(sandbox_type).credentials.header(secret).encode("latin-1")


def probe_headers(kind: AgentKind, secret: str) -> dict[str, str]:
    """The headers of a readiness probe: the agent's credentials, and the body's type."""
    headers = {"Authorization": kind.credentials.header(secret)}
    if kind.readiness.content_type:
        headers["Content-Type"] = kind.readiness.content_type
    return headers


# -- previews (issue 18): which ports of a sandbox a browser may reach at `p{port}-{id}` ------
PREVIEW_LOWEST, PREVIEW_HIGHEST = 1024, 65535
# Every agent's own port is never a preview: the agent is reached at its own subdomain, with
# credentials the proxy injects, and a preview host would hand it requests without them.
AGENT_PORTS: frozenset[int] = frozenset(kind.port for kind in KINDS.values())
PortRefusal = Literal["out_of_range", "agent_port"]


def preview_refusal(port: int, agent_port: int | None = None) -> PortRefusal | None:
    """Why `port` may not be previewed (`agent_port`: where this sandbox's agent listens, when
    it is not its kind's usual port), or None when it may."""
    if not PREVIEW_LOWEST <= port <= PREVIEW_HIGHEST:
        return "out_of_range"
    if port in AGENT_PORTS or port == agent_port:
        return "agent_port"
    return None


# A local agent's previews: the ports its user shares (`agent connect --allow-port`), told to
# the server in this header of the tunnel's WebSocket handshake, comma-separated; and its
# answer when it refuses a preview request, in this response header: why, in one word.
PREVIEW_PORTS_HEADER = "x-agentserver-preview-ports"
PREVIEW_REFUSED_HEADER = "x-agentserver-preview-refused"
NOT_SHARED, NOT_LISTENING = "not-shared", "not-listening"
MAX_SHARED_PORTS = 64


def parse_shared_ports(text: str | None) -> tuple[int, ...]:
    """The ports in a `PREVIEW_PORTS_HEADER` value that may be previewed, sorted, at most
    `MAX_SHARED_PORTS` of them (anything else in it is ignored)."""
    ports: set[int] = set()
    for part in (text or "").split(",")[: MAX_SHARED_PORTS * 2]:
        part = part.strip()
        if part.isascii() and part.isdigit() and len(part) <= 5:
            port = int(part)
            if preview_refusal(port) is None:
                ports.add(port)
    return tuple(sorted(ports)[:MAX_SHARED_PORTS])
