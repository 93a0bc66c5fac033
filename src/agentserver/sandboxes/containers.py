"""A sandbox as a container, described without Docker calls: names, labels, env, limits."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

from agentserver.errors import BackendError
from agentserver.models import SandboxType
from agentserver.sandboxes.base import OPENCLAW_PORT, OPENCODE_PORT, SandboxSpec
from agentserver.settings import Settings

MANAGED_BY = "agentserver"
LABEL_MANAGED = "agentserver.managed-by"
LABEL_SANDBOX = "agentserver.sandbox-id"
LABEL_WORKSPACE = "agentserver.workspace-id"
LABEL_TYPE = "agentserver.sandbox-type"

HOME = "/home/agent"
DISK = "/data/disk0"
# What changes on every start (the proxy token) is written here before each start rather than
# into the environment, which is fixed when a container is made: so a resume keeps the
# container, and whatever the user installed outside the volumes.
SECRETS_DIR = "/etc/agentserver"
PROXY_TOKEN_FILE = f"{SECRETS_DIR}/proxy-token"
OPENCLAW_CONFIG_FILE = f"{SECRETS_DIR}/openclaw.json"

OPENCLAW_MODELS = [
    {"id": "claude-opus-4-6", "name": "Claude Opus 4.6"},
    {"id": "claude-opus-4-5", "name": "Claude Opus 4.5"},
    {"id": "claude-sonnet-4-6", "name": "Claude Sonnet 4.6"},
    {"id": "claude-sonnet-4-5", "name": "Claude Sonnet 4.5"},
    {"id": "claude-haiku-4-5", "name": "Claude Haiku 4.5"},
]
# OpenClaw reads its config from its home: the container copies the one written for this
# start (it holds the proxy token), then runs.
OPENCLAW_COMMAND = [
    "sh",
    "-c",
    f'mkdir -p "$HOME/.openclaw" && cat {OPENCLAW_CONFIG_FILE}'
    ' > "$HOME/.openclaw/openclaw.json" && exec node openclaw.mjs gateway'
    " --allow-unconfigured --bind lan",
]


def container_name(sandbox_id: str) -> str:
    return f"agentserver-sandbox-{sandbox_id}"


def home_volume(sandbox_id: str) -> str:
    return f"agentserver-sandbox-{sandbox_id}-home"


def workspace_volume(workspace_id: str) -> str:
    return f"agentserver-ws-{workspace_id}-disk"


def agent_port(sandbox_type: str) -> int:
    return OPENCLAW_PORT if sandbox_type == SandboxType.OPENCLAW else OPENCODE_PORT


def opencode_config(spec: SandboxSpec) -> str:
    """OPENCODE_CONFIG_CONTENT: Anthropic through the LLM proxy with the sandbox's proxy token,
    which opencode reads from PROXY_TOKEN_FILE when it starts (its `{file:…}` substitution)."""
    # opencode's Anthropic SDK appends /messages to the base URL, so it ends in /v1.
    options = {
        "baseURL": f"{spec.llm_base_url.rstrip('/')}/v1",
        "apiKey": f"{{file:{PROXY_TOKEN_FILE}}}",
    }
    return json.dumps({"provider": {"anthropic": {"options": options}}})


def openclaw_config(spec: SandboxSpec) -> str:
    """OpenClaw's openclaw.json: its gateway behind our proxy, Anthropic through the LLM proxy."""
    # The subdomain proxy authenticates every browser request before it reaches the gateway,
    # which cannot pair devices or check origins through a reverse proxy.
    ui = {"dangerouslyAllowHostHeaderOriginFallback": True, "dangerouslyDisableDeviceAuth": True}
    # OpenClaw's Anthropic client appends /v1/messages itself.
    provider = {
        "baseUrl": spec.llm_base_url.rstrip("/"),
        "apiKey": spec.proxy_token,
        "api": "anthropic-messages",
        "models": OPENCLAW_MODELS,
    }
    return json.dumps(
        {"gateway": {"controlUi": ui}, "models": {"providers": {"anthropic": provider}}}
    )


def sandbox_environment(spec: SandboxSpec, settings: Settings) -> dict[str, str]:
    """The container's environment: its own secret and the proxy token, never the real key."""
    real = {s for s in (settings.anthropic_api_key, settings.anthropic_auth_token) if s}
    env = {"TERM": "xterm-256color"}
    env.update({k: v for k, v in spec.env.items() if v not in real})
    # Ours last: spec.env cannot replace the agent's password or the proxy settings.
    if spec.type == SandboxType.OPENCLAW:
        env["OPENCLAW_GATEWAY_TOKEN"] = spec.agent_secret
    else:
        env["OPENCODE_SERVER_PASSWORD"] = spec.agent_secret
        env["OPENCODE_CONFIG_CONTENT"] = opencode_config(spec)
    return env


def start_files(spec: SandboxSpec) -> dict[str, str]:
    """Files (path → text) written into the container before each start: the proxy token,
    or OpenClaw's whole config, which holds it."""
    if spec.type == SandboxType.OPENCLAW:
        return {OPENCLAW_CONFIG_FILE: openclaw_config(spec)}
    return {PROXY_TOKEN_FILE: spec.proxy_token}


def start_archive(spec: SandboxSpec) -> bytes:
    """`start_files` as a tar for Docker's put_archive at `/`: root's, readable by the agent's
    user (whoever the image runs as), which cannot change them (no capabilities)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo(SECRETS_DIR.lstrip("/"))
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for path, text in start_files(spec).items():
            data = text.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o444
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def image_for(spec: SandboxSpec, settings: Settings) -> str:
    if spec.type == SandboxType.OPENCLAW:
        if not settings.openclaw_image:
            raise BackendError("OpenClaw image not configured (set OPENCLAW_IMAGE)")
        return settings.openclaw_image
    if spec.type != SandboxType.OPENCODE:
        raise BackendError(f"{spec.type} sandboxes do not run in Docker")
    return settings.agent_image


def container_config(spec: SandboxSpec, settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `containers.create`: limits, no privileges, no published ports."""
    labels = {
        LABEL_MANAGED: MANAGED_BY,
        LABEL_SANDBOX: spec.id,
        LABEL_WORKSPACE: spec.workspace_id,
        LABEL_TYPE: str(spec.type),
    }
    config: dict[str, Any] = {
        "image": image_for(spec, settings),
        "name": container_name(spec.id),
        "labels": labels,
        "environment": sandbox_environment(spec, settings),
        "volumes": {
            home_volume(spec.id): {"bind": HOME, "mode": "rw"},
            workspace_volume(spec.workspace_id): {"bind": DISK, "mode": "rw"},
        },
        "network": settings.docker_network,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        # Docker's init forwards SIGTERM (so a stop is quick) and reaps the tools' zombies.
        "init": True,
        "detach": True,
    }
    if spec.type == SandboxType.OPENCLAW:
        config["command"] = OPENCLAW_COMMAND
    for key, value in (
        ("mem_limit", settings.agent_memory_limit),
        ("nano_cpus", settings.agent_nano_cpus),
        ("pids_limit", settings.agent_pids_limit),
    ):
        if value > 0:
            config[key] = value
    return config
