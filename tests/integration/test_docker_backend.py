"""The Docker backend against a real Docker daemon started for the session (skipped without one)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import trio

from agentserver.auth.tokens import new_id, new_token
from agentserver.errors import BackendError
from agentserver.models import SandboxType
from agentserver.sandboxes import docker as backend_module
from agentserver.sandboxes.base import Endpoint, SandboxSpec
from agentserver.sandboxes.containers import (
    PROXY_TOKEN_FILE,
    container_name,
    home_volume,
    workspace_volume,
)
from agentserver.sandboxes.docker import DockerBackend, open_backend
from agentserver.settings import Settings, build_settings
from tests.support.dockerd import Daemon

pytestmark = pytest.mark.docker
REAL_KEY = "sk-ant-real-key-that-must-never-enter-a-sandbox"
NETWORK = "agentserver-test"
BROKEN_IMAGE = "agentserver-test-broken:latest"


def docker_settings(image: str, **overrides: str) -> Settings:
    values: dict[str, str | None] = {
        "backend": "docker",
        "agent_image": image,
        "docker_network": NETWORK,
        "anthropic_api_key": REAL_KEY,
        "agent_memory_limit": "512MiB",
        "agent_pids_limit": "128",
        "agent_nano_cpus": "1000000000",
    }
    values.update(overrides)
    return build_settings(values, {})


def make_spec(workspace_id: str | None = None) -> SandboxSpec:
    return SandboxSpec(
        id=new_id(),
        workspace_id=workspace_id or new_id(),
        type=SandboxType.OPENCODE,
        agent_secret=new_token(),
        llm_base_url="http://agentserver.invalid:8080/proxy/anthropic",
        proxy_token=new_token(),
        env={"ANTHROPIC_API_KEY": REAL_KEY, "EXTRA": "1"},
    )


@dataclass
class Harness:
    """An open backend, the exit notices it sends, and a plain Docker client to look around."""

    backend: DockerBackend
    exits: trio.MemoryReceiveChannel[tuple[str, str]]
    docker: docker.DockerClient
    settings: Settings

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))

    async def container(self, sandbox_id: str) -> Any:
        try:
            return await self.run(self.docker.containers.get, container_name(sandbox_id))
        except docker.errors.NotFound:
            return None

    async def volume_exists(self, name: str) -> bool:
        try:
            await self.run(self.docker.volumes.get, name)
        except docker.errors.NotFound:
            return False
        return True

    async def sh(self, sandbox_id: str, command: str) -> tuple[int, str]:
        """Run a shell command inside the sandbox (docker exec) as its user."""
        container = await self.container(sandbox_id)
        code, output = await self.run(container.exec_run, ["sh", "-c", command])
        return int(code), output.decode()


@pytest.fixture
async def harness(dockerd: Daemon, agent_image: str) -> AsyncIterator[Harness]:
    """A Docker backend on the session's daemon; every sandbox it made is removed afterwards."""
    settings = docker_settings(agent_image)
    send, receive = trio.open_memory_channel[tuple[str, str]](16)

    async def on_exit(sandbox_id: str, reason: str) -> None:
        await send.send((sandbox_id, reason))

    client = docker.DockerClient(base_url=dockerd.host)
    async with open_backend(settings, on_exit) as backend:
        yield Harness(backend, receive, client, settings)
        for managed in await backend.list_managed():
            await backend.destroy(managed.id)
    client.close()


async def agent_get(endpoint: Endpoint, path: str, secret: str | None) -> httpx.Response:
    auth = ("opencode", secret) if secret is not None else None
    async with httpx.AsyncClient(auth=auth, timeout=10, trust_env=False) as http:
        return await http.get(f"http://{endpoint.host}:{endpoint.port}{path}")


async def test_create_runs_opencode_confined_without_the_real_key(harness: Harness) -> None:
    """A new sandbox serves opencode's UI and /session at its container address, behind its
    password, with our labels, limits, no capabilities, no published ports and no real key."""
    spec = make_spec()
    endpoint = await harness.backend.create(spec)
    root = await agent_get(endpoint, "/", spec.agent_secret)
    assert root.status_code == 200
    sessions = await agent_get(endpoint, "/session", spec.agent_secret)
    assert sessions.status_code == 200
    assert isinstance(sessions.json(), list)
    assert (await agent_get(endpoint, "/session", None)).status_code == 401

    attrs = (await harness.container(spec.id)).attrs
    assert attrs["Config"]["Labels"]["agentserver.managed-by"] == "agentserver"
    assert attrs["Config"]["Labels"]["agentserver.sandbox-id"] == spec.id
    assert attrs["Config"]["Labels"]["agentserver.workspace-id"] == spec.workspace_id
    host = attrs["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (512 << 20, 10**9, 128)
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert not host.get("PortBindings")
    assert attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"] == endpoint.host
    mounts = {m["Destination"]: m["Name"] for m in attrs["Mounts"]}
    assert mounts == {
        "/home/agent": home_volume(spec.id),
        "/data/disk0": workspace_volume(spec.workspace_id),
    }
    env = attrs["Config"]["Env"]
    assert not any(REAL_KEY in line for line in env)
    assert f"OPENCODE_SERVER_PASSWORD={spec.agent_secret}" in env
    assert any(
        line.startswith("OPENCODE_CONFIG_CONTENT=") and PROXY_TOKEN_FILE in line for line in env
    )
    assert not any(spec.proxy_token in line for line in env)
    assert await harness.sh(spec.id, f"cat {PROXY_TOKEN_FILE}") == (0, spec.proxy_token)
    code, inside = await harness.sh(spec.id, "env; id -u")
    assert code == 0
    assert REAL_KEY not in inside
    assert inside.strip().endswith("1000")


async def test_workspace_disk_is_shared_by_its_sandboxes_only(harness: Harness) -> None:
    """A file written to /data/disk0 in one sandbox is visible in another sandbox of the same
    workspace and not in a sandbox of another workspace; the disk goes with the workspace."""
    first = make_spec()
    second = make_spec(first.workspace_id)
    stranger = make_spec()
    for spec in (first, second, stranger):
        await harness.backend.create(spec)
    code, _ = await harness.sh(first.id, "echo shared-hello > /data/disk0/note.txt")
    assert code == 0
    assert await harness.sh(second.id, "cat /data/disk0/note.txt") == (0, "shared-hello\n")
    code, _ = await harness.sh(stranger.id, "test -e /data/disk0/note.txt")
    assert code != 0

    for spec in (first, second):
        await harness.backend.destroy(spec.id)
    assert await harness.volume_exists(workspace_volume(first.workspace_id))
    await harness.backend.destroy_workspace(first.workspace_id)
    assert not await harness.volume_exists(workspace_volume(first.workspace_id))
    await harness.backend.destroy_workspace(first.workspace_id)  # idempotent


async def test_pause_resume_destroy(harness: Harness) -> None:
    """Pause stops the container and keeps its files, resume starts it again at its (new)
    address, destroy removes the container and its home volume but not the workspace disk."""
    spec = make_spec()
    await harness.backend.create(spec)
    assert (await harness.sh(spec.id, "echo kept > /home/agent/mine.txt"))[0] == 0

    await harness.backend.pause(spec.id)
    container = await harness.container(spec.id)
    assert container.status == "exited"
    assert await harness.volume_exists(home_volume(spec.id))
    await harness.backend.pause(spec.id)  # idempotent

    endpoint = await harness.backend.resume(spec)
    container = await harness.container(spec.id)
    assert container.status == "running"
    assert container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"] == endpoint.host
    assert (await agent_get(endpoint, "/session", spec.agent_secret)).status_code == 200
    assert await harness.sh(spec.id, "cat /home/agent/mine.txt") == (0, "kept\n")
    assert "opencode server listening" in await harness.backend.logs(spec.id)

    await harness.backend.destroy(spec.id)
    assert await harness.container(spec.id) is None
    assert not await harness.volume_exists(home_volume(spec.id))
    assert await harness.volume_exists(workspace_volume(spec.workspace_id))
    await harness.backend.destroy(spec.id)  # idempotent
    assert await harness.backend.logs(spec.id) == ""
    await harness.backend.destroy_workspace(spec.workspace_id)


async def test_crash_is_reported_but_our_own_stop_is_not(harness: Harness) -> None:
    """A container killed outside agentserver is reported through on_exit with its status;
    the stop done by pause is not reported."""
    paused, crashed = make_spec(), make_spec()
    await harness.backend.create(paused)
    await harness.backend.create(crashed)
    await harness.backend.pause(paused.id)
    container = await harness.container(crashed.id)
    await harness.run(container.kill)
    with trio.fail_after(30):
        sandbox_id, reason = await harness.exits.receive()
    # Docker reports events in order: a notice for the pause would have come first.
    assert sandbox_id == crashed.id
    assert reason.startswith("exited with status 137")


async def test_resume_recreates_a_vanished_container_with_its_volumes(harness: Harness) -> None:
    """If the container was removed behind our back, resume makes it again from the spec and
    the sandbox's home volume (and files) come back."""
    spec = make_spec()
    await harness.backend.create(spec)
    assert (await harness.sh(spec.id, "echo survives > /home/agent/f.txt"))[0] == 0
    await harness.backend.pause(spec.id)
    await harness.run((await harness.container(spec.id)).remove)

    endpoint = await harness.backend.resume(spec)
    assert (await agent_get(endpoint, "/session", spec.agent_secret)).status_code == 200
    assert await harness.sh(spec.id, "cat /home/agent/f.txt") == (0, "survives\n")


async def test_resume_keeps_the_container_and_delivers_the_new_token(harness: Harness) -> None:
    """Pause then resume with a fresh proxy token (as every start mints) keeps the same
    container: a file written outside the volumes is still there, the agent answers, and the
    new token is in the file opencode reads at start, never in the environment."""
    spec = make_spec()
    await harness.backend.create(spec)
    before = (await harness.container(spec.id)).id
    assert await harness.sh(spec.id, f"cat {PROXY_TOKEN_FILE}") == (0, spec.proxy_token)
    assert (await harness.sh(spec.id, "echo installed > /tmp/outside-volumes.txt"))[0] == 0
    await harness.backend.pause(spec.id)
    fresh = replace(spec, proxy_token=new_token())
    endpoint = await harness.backend.resume(fresh)
    container = await harness.container(spec.id)
    assert container.id == before
    assert await harness.sh(spec.id, "cat /tmp/outside-volumes.txt") == (0, "installed\n")
    assert (await agent_get(endpoint, "/session", spec.agent_secret)).status_code == 200
    assert await harness.sh(spec.id, f"cat {PROXY_TOKEN_FILE}") == (0, fresh.proxy_token)
    env = container.attrs["Config"]["Env"]
    assert not any(t in line for line in env for t in (spec.proxy_token, fresh.proxy_token))
    assert (await harness.sh(spec.id, f"echo x > {PROXY_TOKEN_FILE}"))[0] != 0  # read-only


async def test_closing_the_backend_keeps_sandboxes_running(harness: Harness) -> None:
    """Shutting a backend down (a server restart) leaves containers running, and a new backend
    lists them with their addresses for reconciliation."""
    spec = make_spec()
    endpoint = await harness.backend.create(spec)

    async def ignore(sandbox_id: str, reason: str) -> None:
        raise AssertionError(f"unexpected exit notice for {sandbox_id}: {reason}")

    async with open_backend(harness.settings, ignore) as second:
        pass
    await second.aclose()
    assert (await harness.container(spec.id)).status == "running"
    async with open_backend(harness.settings, ignore) as third:
        managed = {m.id: m for m in await third.list_managed()}
    assert managed[spec.id].running
    assert managed[spec.id].endpoint == endpoint


async def test_missing_image_is_a_readable_error(harness: Harness) -> None:
    """Creating a sandbox from an image the Docker host lacks fails with a reason naming it."""
    settings = docker_settings("agentserver-missing-image:never")

    async def on_exit(sandbox_id: str, reason: str) -> None:
        raise AssertionError(f"nothing ran, yet {sandbox_id} {reason}")

    async with open_backend(settings, on_exit) as backend:
        with pytest.raises(BackendError, match="agentserver-missing-image:never"):
            await backend.create(make_spec())


async def test_an_agent_that_exits_during_start_fails_it_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that prints a line and exits while starting fails the start as soon as its
    output ends, with its exit status and that line, not when the wait for an answer ends."""
    monkeypatch.setattr(backend_module, "READY_TIMEOUT", 60.0)
    # It lives a moment (as a real agent's start does), so the start gets its address first.
    command = '["sh", "-c", "echo broken agent; sleep 2; exit 3"]'
    dockerfile = f"FROM {harness.settings.agent_image}\nCMD {command}\n"
    image, _ = await harness.run(
        harness.docker.images.build, fileobj=io.BytesIO(dockerfile.encode()), tag=BROKEN_IMAGE
    )

    async def on_exit(sandbox_id: str, reason: str) -> None:
        await trio.lowlevel.checkpoint()  # the exit may also be reported: not what is tested

    spec = make_spec()
    with trio.fail_after(30):  # half the wait for an answer: only the exit ends it this soon
        async with open_backend(docker_settings(BROKEN_IMAGE), on_exit) as backend:
            with pytest.raises(BackendError) as failed:
                await backend.create(spec)
            await backend.destroy(spec.id)
    await harness.run(harness.docker.images.remove, image.id, force=True)
    assert str(failed.value) == (
        "the agent exited with status 3 during start; last output: broken agent"
    )


async def test_unreachable_daemon_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """With no Docker daemon at DOCKER_HOST, opening the backend fails saying Docker is
    unreachable (this is what `serve` prints at start)."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")

    async def on_exit(sandbox_id: str, reason: str) -> None:
        raise AssertionError("no exit expected")

    with pytest.raises(BackendError, match="Docker daemon unreachable") as caught:
        async with open_backend(docker_settings("any:latest"), on_exit):
            pass
    assert "nothing.sock" in caught.value.message
    assert backend_module.docker_host() == f"unix://{tmp_path}/nothing.sock"
