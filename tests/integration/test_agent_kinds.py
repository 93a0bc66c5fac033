"""Each kind's readiness probe against the real agent (process backend): the agent refuses it
without its credentials and takes it with them, so "ready" proves the credentials work."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from agentserver.auth.tokens import new_id, new_token
from agentserver.kinds import answers_with_credentials, kind_of, probe_headers
from agentserver.models import SandboxType
from agentserver.sandboxes.base import SandboxSpec
from agentserver.sandboxes.process import open_backend
from agentserver.settings import build_settings
from tests.support.sandboxes import reachable_data_dir


def program_for(sandbox_type: SandboxType, opencode_bin: str) -> str:
    if sandbox_type == SandboxType.OPENCODE:
        return opencode_bin
    found = os.environ.get("OPENCLAW_BIN")
    if not found or not Path(found).exists():
        pytest.skip("OpenClaw is not installed: set OPENCLAW_BIN (see test_openclaw.py)")
    return found


@pytest.mark.parametrize("sandbox_type", [SandboxType.OPENCODE, SandboxType.OPENCLAW])
async def test_the_real_agent_refuses_its_probe_without_credentials(
    tmp_path: Path, opencode_bin: str, sandbox_type: SandboxType
) -> None:
    """Started by the process backend, the agent answers its kind's probe as ready with its
    secret, and with 401 without it or with a wrong one."""
    program = program_for(sandbox_type, opencode_bin)
    settings = build_settings(
        {
            "backend": "process",
            "data_dir": str(reachable_data_dir(tmp_path / "d")),
            "opencode_bin": opencode_bin,
            "openclaw_bin": program if sandbox_type == SandboxType.OPENCLAW else None,
        },
        {},
    )
    spec = SandboxSpec(
        new_id(), new_id(), sandbox_type, new_token(), "http://127.0.0.1:9/proxy", new_token()
    )

    async def on_exit(sandbox_id: str, reason: str) -> None:
        raise AssertionError(f"the agent stopped: {reason}")

    kind = kind_of(sandbox_type)
    async with open_backend(settings, on_exit) as backend:
        endpoint = await backend.create(spec)
        url = f"http://{endpoint.host}:{endpoint.port}{kind.readiness.path}"
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:

            async def probe(headers: dict[str, str]) -> int:
                response = await client.request(
                    kind.readiness.method, url, headers=headers, content=kind.readiness.body
                )
                return response.status_code

            assert answers_with_credentials(await probe(probe_headers(kind, spec.agent_secret)))
            json_only = {"Content-Type": "application/json"}
            assert await probe(json_only if kind.readiness.body else {}) == 401
            assert await probe(probe_headers(kind, "wrong")) == 401
        await backend.destroy(spec.id)
