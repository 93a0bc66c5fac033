"""The kinds table (kinds.py): each row pinned, and every backend, the proxy and the
API rendering what the row says, so no copy can drift from it again."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentserver.agent.connect import DEFAULT_OPENCODE_URL
from agentserver.agent.forward import Forwarder
from agentserver.api.sandboxes import sandbox_url
from agentserver.kinds import (
    KINDS,
    OPENCLAW,
    OPENCLAW_MODELS,
    OPENCODE,
    AgentKind,
    LlmAccess,
    answers_with_credentials,
    authorization,
    kind_of,
    probe_headers,
    types_of,
)
from agentserver.models import Sandbox, SandboxType
from agentserver.proxy.routing import PREFIXES, Target, resolve, sandbox_host
from agentserver.sandboxes.account import Account
from agentserver.sandboxes.base import SandboxSpec
from agentserver.sandboxes.containers import (
    OPENCLAW_COMMAND,
    OPENCLAW_CONFIG_FILE,
    PROXY_TOKEN_FILE,
    agent_port,
    container_config,
    sandbox_environment,
    start_files,
)
from agentserver.sandboxes.launch import Folders, agent_command, write_agent_config
from agentserver.settings import Settings, build_settings

REPO = Path(__file__).resolve().parents[2]
BASE = "http://srv:8080/proxy/anthropic"


def spec(kind: SandboxType) -> SandboxSpec:
    return SandboxSpec("abc123", "wsp456", kind, "agent-secret", BASE, "proxy-token")


def a_sandbox(sandbox_type: SandboxType) -> Sandbox:
    now = datetime.now(UTC)
    return Sandbox(
        *("abc123", "wsp456", "name", sandbox_type.value, "running", None, None),
        *(now, now, now, None, "agent-secret", None, None, None, None),
    )


def me() -> Account:
    return Account("me", os.geteuid(), os.getegid())


def process_settings(tmp_path: Path) -> Settings:
    program = tmp_path / "bin" / "agent"
    program.parent.mkdir(exist_ok=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    values = {"opencode_bin": str(program), "openclaw_bin": str(program)}
    return build_settings({"backend": "process", "data_dir": str(tmp_path / "d"), **values}, {})


def docker_settings() -> Settings:
    return build_settings({"backend": "docker", "openclaw_image": "claw:1"}, {})


def test_the_opencode_row() -> None:
    """opencode: served at oc-{id}, port 4096, Basic auth as user opencode, ready once GET /
    answers with its password, its program and image from OPENCODE_BIN and AGENT_IMAGE."""
    assert (OPENCODE.name, OPENCODE.prefix, OPENCODE.port) == ("opencode", "oc-", 4096)
    assert OPENCODE.credentials.header("pw") == "Basic b3BlbmNvZGU6cHc="  # opencode:pw
    assert (OPENCODE.readiness.method, OPENCODE.readiness.path) == ("GET", "/")
    assert OPENCODE.readiness.body == b""
    assert (OPENCODE.program_setting, OPENCODE.image_setting) == ("opencode_bin", "agent_image")
    assert OPENCODE.arguments("loopback", 5) == [
        *("serve", "--hostname", "127.0.0.1", "--port", "5"),
    ]
    llm = LlmAccess(BASE + "/", "key")
    assert OPENCODE.environment("pw", llm) == {
        "OPENCODE_SERVER_PASSWORD": "pw",
        "OPENCODE_CONFIG_CONTENT": json.dumps(
            {"provider": {"anthropic": {"options": {"baseURL": BASE + "/v1", "apiKey": "key"}}}}
        ),
    }
    assert OPENCODE.config is None
    assert OPENCODE.config_path is None


def test_the_openclaw_row() -> None:
    """OpenClaw: served at claw-{id}, port 18789, its gateway token as a Bearer, ready once
    an empty tool call is taken with the token, a config file in its home, its program and
    image from OPENCLAW_BIN and OPENCLAW_IMAGE."""
    assert (OPENCLAW.name, OPENCLAW.prefix, OPENCLAW.port) == ("openclaw", "claw-", 18789)
    assert OPENCLAW.credentials.header("tok") == "Bearer tok"
    assert OPENCLAW.readiness.method == "POST"
    assert (OPENCLAW.readiness.path, OPENCLAW.readiness.body) == ("/tools/invoke", b"{}")
    assert (OPENCLAW.program_setting, OPENCLAW.image_setting) == ("openclaw_bin", "openclaw_image")
    assert OPENCLAW.arguments("all", 7) == [
        *("gateway", "run", "--allow-unconfigured", "--bind", "lan"),
        *("--port", "7", "--auth", "token"),
    ]
    assert OPENCLAW.environment("tok", LlmAccess(BASE, "key")) == {"OPENCLAW_GATEWAY_TOKEN": "tok"}
    assert OPENCLAW.config_path == ".openclaw/openclaw.json"
    assert OPENCLAW.config is not None
    config = json.loads(OPENCLAW.config(LlmAccess(BASE + "/", "key")))
    provider = config["models"]["providers"]["anthropic"]
    assert (provider["baseUrl"], provider["apiKey"]) == (BASE, "key")
    assert provider["models"] == [dict(m) for m in OPENCLAW_MODELS]
    assert config["gateway"]["mode"] == "local"


def test_every_sandbox_type_has_a_row_and_local_is_opencode() -> None:
    """Each sandbox type has a kind; a local sandbox is opencode reached through its tunnel."""
    assert set(KINDS) == set(SandboxType)
    assert KINDS[SandboxType.LOCAL] is OPENCODE
    assert kind_of("openclaw") is OPENCLAW
    assert types_of("opencode") == {SandboxType.OPENCODE, SandboxType.LOCAL}
    assert types_of("openclaw") == {SandboxType.OPENCLAW}


@pytest.mark.parametrize("status", [200, 204, 302, 400, 404, 405])
def test_an_answer_that_took_the_credentials_is_ready(status: int) -> None:
    """The one readiness rule: any answer short of a server error or a refusal."""
    assert answers_with_credentials(status)


@pytest.mark.parametrize("status", [401, 403, 500, 502, 503])
def test_a_refusal_or_a_server_error_is_not_ready(status: int) -> None:
    """Refused credentials (which the Docker backend once took as ready when 403) and 5xx
    answers (which a starting agent gives) are not ready."""
    assert not answers_with_credentials(status)


KIND_TYPES = [(SandboxType.OPENCODE, OPENCODE), (SandboxType.OPENCLAW, OPENCLAW)]


@pytest.mark.parametrize(("sandbox_type", "kind"), KIND_TYPES)
def test_the_process_command_and_environment_come_from_the_row(
    tmp_path: Path, sandbox_type: SandboxType, kind: AgentKind
) -> None:
    """The process backend runs the kind's program (its setting) with the kind's arguments
    on loopback and the port it picked, and the kind's environment with the token itself."""
    settings = process_settings(tmp_path)
    argv, env = agent_command(
        settings,
        spec(sandbox_type),
        4321,
        folders=Folders(tmp_path / "d"),
        isolated=True,
        account=me(),
    )
    assert argv == [str(tmp_path / "bin" / "agent"), *kind.arguments("loopback", 4321)]
    wanted = kind.environment("agent-secret", LlmAccess(BASE, "proxy-token"))
    assert {name: env[name] for name in wanted} == wanted


@pytest.mark.parametrize(("sandbox_type", "kind"), KIND_TYPES)
def test_the_docker_container_comes_from_the_row(
    sandbox_type: SandboxType, kind: AgentKind
) -> None:
    """The Docker backend uses the kind's image setting, port and environment (the token by
    file reference), and writes the kind's config (with the token) before each start."""
    config = container_config(spec(sandbox_type), docker_settings())
    assert config["image"] == getattr(docker_settings(), kind.image_setting)
    assert agent_port(sandbox_type) == kind.port
    env = sandbox_environment(spec(sandbox_type), docker_settings())
    wanted = kind.environment("agent-secret", LlmAccess(BASE, f"{{file:{PROXY_TOKEN_FILE}}}"))
    assert {name: env[name] for name in wanted} == wanted
    if kind.config is None:
        assert start_files(spec(sandbox_type)) == {PROXY_TOKEN_FILE: "proxy-token"}
    else:
        written = start_files(spec(sandbox_type))[OPENCLAW_CONFIG_FILE]
        assert written == kind.config(LlmAccess(BASE, "proxy-token"))


def test_the_docker_openclaw_command_runs_the_rows_arguments() -> None:
    """The OpenClaw container copies its config to the row's path and runs the row's
    arguments on every interface and the row's port."""
    script = OPENCLAW_COMMAND[-1]
    assert f'"$HOME/{OPENCLAW.config_path}"' in script
    assert script.endswith(" ".join(OPENCLAW.arguments("all", OPENCLAW.port)))


def test_the_sandbox_image_runs_opencode_as_the_row_says() -> None:
    """The sandbox image's ENTRYPOINT is opencode with the row's arguments on its port."""
    dockerfile = (REPO / "container/sandbox.Dockerfile").read_text()
    found = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    assert found is not None
    assert json.loads(found.group(1)) == ["opencode", *OPENCODE.arguments("all", OPENCODE.port)]


def test_both_backends_give_openclaw_one_config(tmp_path: Path) -> None:
    """Regression: the process backend's OpenClaw config had two models and no control-UI
    settings; now both backends write the same config, so the same model list."""
    home = tmp_path / "home"
    home.mkdir()
    write_agent_config(home, spec(SandboxType.OPENCLAW), me())
    from_process = json.loads((home / ".openclaw" / "openclaw.json").read_text())
    from_docker = json.loads(start_files(spec(SandboxType.OPENCLAW))[OPENCLAW_CONFIG_FILE])
    assert from_process == from_docker
    models = from_process["models"]["providers"]["anthropic"]["models"]
    assert [m["id"] for m in models] == [m["id"] for m in OPENCLAW_MODELS]


def test_opencode_gets_no_config_file(tmp_path: Path) -> None:
    """An opencode home gets no config file: its configuration is its environment."""
    home = tmp_path / "home"
    home.mkdir()
    write_agent_config(home, spec(SandboxType.OPENCODE), me())
    assert list(home.iterdir()) == []


@pytest.mark.parametrize(("sandbox_type", "kind"), KIND_TYPES)
def test_the_proxy_and_api_use_the_rows_prefix_and_credentials(
    sandbox_type: SandboxType, kind: AgentKind
) -> None:
    """The routing, the sandbox URL the API gives and the proxy's Authorization all come from
    the row."""
    assert PREFIXES[kind.prefix] == kind.name
    host = sandbox_host(kind.name, "abc123", "example.com")
    assert host == f"{kind.prefix}abc123.example.com"
    assert resolve(host, "example.com") == Target(kind.name, "abc123")
    assert authorization(sandbox_type, "s") == kind.credentials.header("s").encode()
    sandbox = a_sandbox(sandbox_type)
    url = sandbox_url(sandbox, build_settings({"base_domain": "example.com"}, {}))
    assert url.startswith(f"http://{kind.prefix}{sandbox.id}.example.com")


def test_a_probe_carries_the_credentials_and_the_body_type() -> None:
    """Every kind's probe sends its credentials; OpenClaw's JSON body says it is JSON."""
    assert probe_headers(OPENCODE, "pw") == {"Authorization": OPENCODE.credentials.header("pw")}
    assert probe_headers(OPENCLAW, "tok") == {
        "Authorization": "Bearer tok",
        "Content-Type": "application/json",
    }


def test_the_local_agent_reaches_opencode_as_the_row_says() -> None:
    """`agent connect` looks for opencode on the row's port by default and sends it the row's
    credentials with the password it is given."""
    assert f"http://localhost:{OPENCODE.port}" == DEFAULT_OPENCODE_URL
    forwarder = Forwarder(DEFAULT_OPENCODE_URL, "pw", lambda line: None)
    assert forwarder._auth == OPENCODE.credentials.header("pw")
