"""A sandbox as a container, described without Docker calls: names, labels, env, limits."""

from __future__ import annotations

import io
import tarfile
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from agentserver.errors import BackendError
from agentserver.kinds import OPENCLAW, OPENCODE, LlmAccess, kind_of
from agentserver.models import SandboxType
from agentserver.sandboxes.base import SandboxSpec
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

# OpenClaw reads its config from its home: the container copies the one written for this
# start (it holds the proxy token), then runs the gateway as the kinds table says.
OPENCLAW_COMMAND = [
    "sh",
    "-c",
    f'mkdir -p "$HOME/{PurePosixPath(OPENCLAW.config_path or "").parent}"'
    f' && cat {OPENCLAW_CONFIG_FILE} > "$HOME/{OPENCLAW.config_path}"'
    f" && exec node openclaw.mjs {' '.join(OPENCLAW.arguments('all', OPENCLAW.port))}",
]


def container_name(sandbox_id: str) -> str:
    return f"agentserver-sandbox-{sandbox_id}"


def home_volume(sandbox_id: str) -> str:
    return f"agentserver-sandbox-{sandbox_id}-home"


def workspace_volume(workspace_id: str) -> str:
    return f"agentserver-ws-{workspace_id}-disk"


def agent_port(sandbox_type: str) -> int:
    """The agent's port inside a container of this type (opencode's for an unknown label)."""
    try:
        return kind_of(sandbox_type).port
    except ValueError:
        return OPENCODE.port


def sandbox_environment(spec: SandboxSpec, settings: Settings) -> dict[str, str]:
    """The container's environment: its own secret and the proxy settings, never the real key.
    opencode reads the proxy token from PROXY_TOKEN_FILE when it starts (its `{file:…}`
    substitution): the token changes on every start, the environment cannot."""
    real = {s for s in (settings.anthropic_api_key, settings.anthropic_auth_token) if s}
    env = {"TERM": "xterm-256color"}
    env.update({k: v for k, v in spec.env.items() if v not in real})
    # Ours last: spec.env cannot replace the agent's password or the proxy settings.
    llm = LlmAccess(spec.llm_base_url, f"{{file:{PROXY_TOKEN_FILE}}}")
    env.update(kind_of(spec.type).environment(spec.agent_secret, llm))
    return env


def start_files(spec: SandboxSpec) -> dict[str, str]:
    """Files (path → text) written into the container before each start: the proxy token,
    or OpenClaw's whole config, which holds it."""
    kind = kind_of(spec.type)
    if kind.config is not None:
        return {OPENCLAW_CONFIG_FILE: kind.config(LlmAccess(spec.llm_base_url, spec.proxy_token))}
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
    if spec.type == SandboxType.LOCAL:
        raise BackendError(f"{spec.type} sandboxes do not run in Docker")
    kind = kind_of(spec.type)
    image = getattr(settings, kind.image_setting)
    if not image:
        raise BackendError(f"{kind.title} image not configured (set {kind.image_option})")
    return str(image)


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
    if kind_of(spec.type) is OPENCLAW:
        config["command"] = OPENCLAW_COMMAND  # run from the image's folder (openclaw.mjs)
    else:
        # opencode's project is the folder it starts in: the workspace's disk.
        config["working_dir"] = DISK
    for key, value in (
        ("mem_limit", settings.agent_memory_limit),
        ("nano_cpus", settings.agent_nano_cpus),
        ("pids_limit", settings.agent_pids_limit),
    ):
        if value > 0:
            config[key] = value
    return config


def exit_reason(state: dict[str, Any]) -> str:
    """A stopped container's end in words, from its inspected `State`."""
    text = f"exited with status {state.get('ExitCode')}"
    if state.get("OOMKilled"):
        text += " (out of memory)"
    if state.get("Error"):
        text += f": {state['Error']}"
    return text


def docker_time(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds (`2026-12-06T21:35:19.990468538Z`) in seconds."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(f"{whole}+00:00").timestamp()
    return seconds + float(f"0.{fraction or 0}")
