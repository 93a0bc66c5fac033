"""The Docker backend's pure parts (container config, environment) and the compose/image files."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentserver.errors import BackendError
from agentserver.models import SandboxType
from agentserver.sandboxes.base import SandboxSpec
from agentserver.sandboxes.containers import (
    OPENCLAW_CONFIG_FILE,
    PROXY_TOKEN_FILE,
    container_config,
    container_name,
    docker_time,
    home_volume,
    sandbox_environment,
    start_archive,
    start_files,
    workspace_volume,
)
from agentserver.settings import Settings, build_settings

REPO = Path(__file__).resolve().parents[2]
REAL_KEY = "sk-ant-api03-real"
REAL_TOKEN = "real-bearer-token"


def settings(**values: str) -> Settings:
    base: dict[str, str | None] = {
        "backend": "docker",
        "anthropic_api_key": REAL_KEY,
        "anthropic_auth_token": REAL_TOKEN,
    }
    base.update(values)
    return build_settings(base, {})


def spec(
    kind: SandboxType = SandboxType.OPENCODE, env: dict[str, str] | None = None
) -> SandboxSpec:
    return SandboxSpec(
        id="abc123def456ghi7",
        workspace_id="wsp0000000000001",
        type=kind,
        agent_secret="agent-secret",
        llm_base_url="http://srv:8080/proxy/anthropic/",
        proxy_token="proxy-token",
        env=env or {},
    )


def test_opencode_environment_holds_proxy_settings_and_never_the_real_key() -> None:
    """opencode gets its password and the LLM proxy URL, the proxy token by reference to the
    file written at each start (never in the fixed environment); values equal to the server's
    real Anthropic credentials are dropped, whatever their name."""
    env = sandbox_environment(
        spec(
            env={
                "ANTHROPIC_API_KEY": REAL_KEY,
                "X": REAL_TOKEN,
                "OPENCODE_SERVER_PASSWORD": "hijack",
                "KEEP": "me",
            }
        ),
        settings(),
    )
    assert REAL_KEY not in json.dumps(env)
    assert REAL_TOKEN not in json.dumps(env)
    assert env["OPENCODE_SERVER_PASSWORD"] == "agent-secret"
    assert env["KEEP"] == "me"
    assert env["TERM"] == "xterm-256color"
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    assert config == {
        "provider": {
            "anthropic": {
                "options": {
                    "baseURL": "http://srv:8080/proxy/anthropic/v1",
                    "apiKey": "{file:/etc/agentserver/proxy-token}",
                }
            }
        }
    }
    assert 'proxy-token"' not in json.dumps(env)
    assert start_files(spec()) == {PROXY_TOKEN_FILE: "proxy-token"}


def test_openclaw_gets_gateway_token_and_a_proxy_config_file() -> None:
    """OpenClaw gets its gateway token and a config using the proxy, written as a file at each
    start (its command copies it home); the proxy token is not in its environment."""
    config = container_config(spec(SandboxType.OPENCLAW), settings(openclaw_image="claw:1"))
    env = config["environment"]
    assert config["image"] == "claw:1"
    assert env["OPENCLAW_GATEWAY_TOKEN"] == "agent-secret"
    assert "OPENCODE_SERVER_PASSWORD" not in env
    assert "proxy-token" not in json.dumps(env)
    files = start_files(spec(SandboxType.OPENCLAW))
    provider = json.loads(files[OPENCLAW_CONFIG_FILE])["models"]["providers"]["anthropic"]
    assert (provider["baseUrl"], provider["apiKey"]) == (
        "http://srv:8080/proxy/anthropic",
        "proxy-token",
    )
    assert OPENCLAW_CONFIG_FILE in " ".join(config["command"])


def test_openclaw_without_image_and_local_sandboxes_are_refused() -> None:
    """No OPENCLAW_IMAGE means OpenClaw sandboxes fail with that reason; local never runs here."""
    with pytest.raises(BackendError, match="OpenClaw image not configured"):
        container_config(spec(SandboxType.OPENCLAW), settings())
    with pytest.raises(BackendError, match="local"):
        container_config(spec(SandboxType.LOCAL), settings())


def test_container_is_confined_labelled_and_uses_one_naming_scheme() -> None:
    """The container has the configured limits, no capabilities, no published ports, our
    labels, and volumes named after the sandbox and the workspace."""
    config = container_config(
        spec(), settings(agent_image="img:2", docker_network="net1", agent_memory_limit="1GiB")
    )
    assert (
        config["name"]
        == container_name("abc123def456ghi7")
        == "agentserver-sandbox-abc123def456ghi7"
    )
    assert config["image"] == "img:2"
    assert config["network"] == "net1"
    assert (config["mem_limit"], config["nano_cpus"], config["pids_limit"]) == (
        1 << 30,
        2 * 10**9,
        256,
    )
    assert config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges"]
    assert "ports" not in config
    assert "command" not in config  # the image's own `opencode serve`
    assert config["labels"] == {
        "agentserver.managed-by": "agentserver",
        "agentserver.sandbox-id": "abc123def456ghi7",
        "agentserver.workspace-id": "wsp0000000000001",
        "agentserver.sandbox-type": "opencode",
    }
    assert config["volumes"] == {
        home_volume("abc123def456ghi7"): {"bind": "/home/agent", "mode": "rw"},
        workspace_volume("wsp0000000000001"): {"bind": "/data/disk0", "mode": "rw"},
    }


def test_default_limits_match_the_original() -> None:
    """Without settings the limits are the original's: 2 GiB, 2 CPUs, 256 processes."""
    config = container_config(spec(), build_settings({"backend": "docker"}, {}))
    assert (config["mem_limit"], config["nano_cpus"], config["pids_limit"]) == (
        2 << 30,
        2 * 10**9,
        256,
    )


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


def test_compose_runs_postgres_and_agentserver_with_the_docker_backend() -> None:
    """docker-compose.yml parses; agentserver uses the Docker socket and backend, joins the
    sandbox network it names in AGENT_NETWORK, and reaches PostgreSQL 16 over another one."""
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    server = services["agentserver"]
    env = server["environment"]
    assert env["AGENTSERVER_BACKEND"] == "docker"
    assert env["BASE_DOMAIN"] == "localhost:8080"
    assert env["ANTHROPIC_API_KEY"] == "${ANTHROPIC_API_KEY:-}"
    assert env["ANTHROPIC_PROXY_URL"] == "http://agentserver:8080/proxy/anthropic"
    assert "/var/run/docker.sock:/var/run/docker.sock" in server["volumes"]
    assert "8080:8080" in server["ports"]
    assert re.match(r"postgres(ql)?://[^@]+@postgres:5432/", env["DATABASE_URL"])
    networks = compose()["networks"]
    named = {key: (value or {}).get("name", key) for key, value in networks.items()}
    assert env["AGENT_NETWORK"] in [named[n] for n in server["networks"]]
    # Sandboxes join AGENT_NETWORK: PostgreSQL must not be on it.
    assert env["AGENT_NETWORK"] not in [named[n] for n in services["postgres"]["networks"]]
    assert (REPO / server["build"]["dockerfile"]).is_file()
    # The image is not root; the Docker socket's group varies, so compose runs it as root.
    assert server["user"] == "root"


def test_dockerfiles_pin_opencode_and_let_the_base_be_chosen() -> None:
    """The sandbox image pins the same opencode as scripts/bootstrap, runs it as uid 1000 and
    its base is a build argument; the server image starts `agentserver serve` on 0.0.0.0:8080
    as uid 10001 (the Helm chart's non-root user), with `agentserver` as its entry point."""
    sandbox = (REPO / "container/sandbox.Dockerfile").read_text()
    pinned = re.search(r"OPENCODE_VERSION=(\S+)", (REPO / "scripts/bootstrap").read_text())
    assert pinned is not None
    assert f"ARG OPENCODE_VERSION={pinned.group(1)}" in sandbox
    assert re.search(r"^ARG BASE=debian:\S+$", sandbox, re.MULTILINE)
    assert "FROM ${BASE}" in sandbox
    assert "--uid 1000" in sandbox
    assert "USER agent" in sandbox
    assert '"opencode", "serve", "--hostname", "0.0.0.0", "--port", "4096"' in sandbox
    server = (REPO / "container/server.Dockerfile").read_text()
    assert 'ENTRYPOINT ["agentserver"]' in server
    assert 'CMD ["serve"]' in server
    assert "AGENTSERVER_LISTEN=0.0.0.0:8080" in server
    assert "USER 10001:10001" in server


def test_start_archive_holds_the_start_files_read_only() -> None:
    """The archive written at `/` before each start holds exactly the start files, owned by
    root and read-only, under a directory anyone may enter."""
    with tarfile.open(fileobj=io.BytesIO(start_archive(spec()))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"etc/agentserver", PROXY_TOKEN_FILE.lstrip("/")}
        folder, token = members["etc/agentserver"], members[PROXY_TOKEN_FILE.lstrip("/")]
        assert (folder.isdir(), folder.mode, folder.uid) == (True, 0o755, 0)
        assert (token.isfile(), token.mode, token.uid) == (True, 0o444, 0)
        extracted = tar.extractfile(token)
        assert extracted is not None
        assert extracted.read() == b"proxy-token"


def test_opencode_starts_on_the_workspace_disk_and_openclaw_in_its_image_folder() -> None:
    """opencode's container works in /data/disk0 (its project: the shared disk); OpenClaw's
    keeps the image's folder, where its command finds openclaw.mjs."""
    opencode = container_config(spec(), settings())
    assert opencode["working_dir"] == "/data/disk0"
    assert (
        opencode["volumes"][workspace_volume("wsp0000000000001")]["bind"] == opencode["working_dir"]
    )
    openclaw = container_config(spec(SandboxType.OPENCLAW), settings(openclaw_image="claw:1"))
    assert "working_dir" not in openclaw


def test_docker_times_keep_their_fraction_of_a_second() -> None:
    """Docker's start times (RFC 3339, nanoseconds, UTC) become seconds on the log clock
    without losing the fraction, which the output is followed from."""
    started = docker_time("2026-12-06T21:35:19.990468538Z")
    assert started == pytest.approx(1796592919.990468538, abs=1e-6)
    assert docker_time("2026-12-06T21:35:19Z") == 1796592919.0
