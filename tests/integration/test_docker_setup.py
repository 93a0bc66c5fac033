"""A Docker sandbox's agent gets the variables its creator gave, on create and on resume."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from tests.integration.test_docker_backend import Harness, agent_get, harness, make_spec

__all__ = ["harness"]  # the fixture, shared with the backend's own tests

pytestmark = pytest.mark.docker
SECRET = "docker-secret-value-3b8e"
# The environment of the process whose command line names opencode (not docker's init).
AGENT_ENV = (
    'for p in /proc/[0-9]*; do [ "${p#/proc/}" = 1 ] && continue;'
    " if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q opencode; then"
    " tr '\\0' '\\n' < $p/environ; break; fi; done"
)


async def test_the_agent_sees_its_variables_after_a_resume_too(harness: Harness) -> None:
    spec = dataclasses.replace(make_spec(), env={"MY_TOKEN": SECRET, "OTHER": "two words"})
    await harness.backend.create(spec)
    for _ in range(2):
        code, seen = await harness.sh(spec.id, AGENT_ENV)
        assert code == 0
        lines = seen.splitlines()
        assert f"MY_TOKEN={SECRET}" in lines, seen
        assert "OTHER=two words" in lines
        await harness.backend.pause(spec.id)
        await harness.backend.resume(spec)
    await harness.backend.destroy(spec.id)
    await harness.backend.destroy_workspace(spec.workspace_id)


async def test_the_clone_runs_in_the_container_and_its_failure_is_logged(
    harness: Harness,
) -> None:
    """The clone runs inside the container once the agent answers: in the test image (busybox,
    no git) it fails, which leaves the agent running with a "git clone failed" log line."""
    spec = dataclasses.replace(make_spec(), git_url="https://example.invalid/team/project.git")
    endpoint = await harness.backend.create(spec)
    logs = ""
    with trio.move_on_after(60):
        while "git clone" not in logs:
            await trio.sleep(0.2)  # no event marks a log line: poll, bounded
            logs = await harness.backend.logs(spec.id)
    assert "git clone failed: " in logs, logs
    assert (await agent_get(endpoint, "/session", spec.agent_secret)).status_code == 200
    await harness.backend.destroy(spec.id)
    await harness.backend.destroy_workspace(spec.workspace_id)
