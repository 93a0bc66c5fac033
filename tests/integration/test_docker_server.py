"""agentserver with `--backend docker` on a real daemon: API, proxy, restarts, failures."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import trio

from agentserver.auth.tokens import new_id
from agentserver.sandboxes.containers import (
    LABEL_MANAGED,
    LABEL_SANDBOX,
    LABEL_WORKSPACE,
    MANAGED_BY,
    container_name,
    home_volume,
    workspace_volume,
)
from agentserver.settings import Settings
from tests.conftest import Server, make_settings, start_server
from tests.support.dockerd import Daemon
from tests.support.sandbox_login import sandbox_client
from tests.support.sandboxes import EventStream, open_events, owner_with_workspace

pytestmark = pytest.mark.docker
REAL_KEY = "sk-ant-real-key-that-must-never-enter-a-sandbox"
NETWORK = "agentserver-test"


def docker_server_settings(db_url: str, data_dir: Path, image: str) -> Settings:
    return make_settings(
        db_url,
        data_dir,
        backend="docker",
        agent_image=image,
        docker_network=NETWORK,
        anthropic_api_key=REAL_KEY,
    )


@pytest.fixture
def client(dockerd: Daemon) -> Any:
    """A plain Docker client on the session's daemon, to look at what the server made."""
    found = docker.DockerClient(base_url=dockerd.host)
    yield found
    found.close()


@pytest.fixture
async def docker_server(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    agent_image: str,
) -> AsyncIterator[Server]:
    server = await start_server(nursery, docker_server_settings(db_url, tmp_path, agent_image))
    yield server
    server.shutdown.set()


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def container_of(client: docker.DockerClient, sandbox_id: str) -> Any:
    try:
        return await in_thread(client.containers.get, container_name(sandbox_id))
    except docker.errors.NotFound:
        return None


async def volume_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        await in_thread(client.volumes.get, name)
    except docker.errors.NotFound:
        return False
    return True


async def sh(client: docker.DockerClient, sandbox_id: str, command: str) -> tuple[int, str]:
    container = await container_of(client, sandbox_id)
    code, output = await in_thread(container.exec_run, ["sh", "-c", command])
    return int(code), output.decode()


async def create_running(
    api: httpx.AsyncClient, events: EventStream, wid: str, name: str
) -> dict[str, Any]:
    response = await api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": name})
    assert response.status_code == 201, response.text
    done = await events.until(response.json()["id"], "running", "failed")
    assert done["status"] == "running", done
    return done


async def through_proxy(
    server: Server, api: httpx.AsyncClient, sandbox_id: str
) -> httpx.AsyncClient:
    """A client on oc-{id}.localhost:{port} holding a sandbox session (via /open and a ticket)."""
    host = f"oc-{sandbox_id}.localhost:{server.port}"
    return await sandbox_client(server.url, api, sandbox_id, host=host)


async def test_docker_sandbox_lifecycle_through_api_and_proxy(
    docker_server: Server, nursery: trio.Nursery, client: docker.DockerClient
) -> None:
    """Create → running (opencode's UI and /session through the subdomain proxy) → the
    workspace disk is shared by a second sandbox → pause keeps files → resume picks up the
    new address → delete removes container and home volume; no real key in any container."""
    api, wid = await owner_with_workspace(docker_server)
    events = await open_events(nursery, api, wid)
    first = await create_running(api, events, wid, "first")
    second = await create_running(api, events, wid, "second")
    sid = first["id"]

    async with await through_proxy(docker_server, api, sid) as sub:
        page = await sub.get("/")
        sessions = await sub.get("/session")
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    assert sessions.status_code == 200
    assert sessions.json() == []

    row = await docker_server.deps.sandboxes.get(sid)
    old_host = row.endpoint_host
    container = await container_of(client, sid)
    assert row.endpoint_host == container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    for each in (first, second):
        env = (await container_of(client, each["id"])).attrs["Config"]["Env"]
        assert not any(REAL_KEY in line for line in env)
        assert any(line.startswith("OPENCODE_CONFIG_CONTENT=") for line in env)
    assert (await sh(client, sid, "echo from-first > /data/disk0/shared.txt"))[0] == 0
    assert await sh(client, second["id"], "cat /data/disk0/shared.txt") == (0, "from-first\n")
    assert (await sh(client, sid, "echo mine > /home/agent/own.txt"))[0] == 0

    assert (await api.post(f"/api/sandboxes/{sid}/pause")).status_code == 200
    assert (await events.until(sid, "paused", "failed"))["status"] == "paused"
    assert (await container_of(client, sid)).status == "exited"
    assert await volume_exists(client, home_volume(sid))

    # Another container takes the address the paused one had, so resume must pick up a new one.
    blocker = await in_thread(
        client.containers.run,
        str(container.attrs["Config"]["Image"]),
        ["sleep", "600"],
        detach=True,
        network=NETWORK,
        init=True,
    )
    assert (await api.post(f"/api/sandboxes/{sid}/resume")).status_code == 200
    resumed = await events.until(sid, "running", "failed", after=len(events.seen) - 1)
    assert resumed["status"] == "running", resumed
    row = await docker_server.deps.sandboxes.get(sid)
    address = (await container_of(client, sid)).attrs["NetworkSettings"]["Networks"][NETWORK]
    assert row.endpoint_host == address["IPAddress"] != old_host
    assert await sh(client, sid, "cat /home/agent/own.txt") == (0, "mine\n")
    async with await through_proxy(docker_server, api, sid) as sub:
        assert (await sub.get("/session")).status_code == 200
    await in_thread(blocker.remove, force=True)

    assert (await api.delete(f"/api/sandboxes/{sid}")).status_code == 204
    assert await container_of(client, sid) is None
    assert not await volume_exists(client, home_volume(sid))
    assert await volume_exists(client, workspace_volume(wid))
    assert (await api.delete(f"/api/sandboxes/{second['id']}")).status_code == 204
    assert (await api.delete(f"/api/workspaces/{wid}")).status_code == 204
    assert not await volume_exists(client, workspace_volume(wid))
    await api.aclose()


async def test_restart_keeps_sandboxes_and_removes_orphans(
    db_url: str,
    tmp_path: Path,
    agent_image: str,
    client: docker.DockerClient,
) -> None:
    """Restarting the server leaves a running sandbox's container running (same container,
    row still running), and removes a labelled container that has no row."""
    settings = docker_server_settings(db_url, tmp_path, agent_image)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, settings)
        api, wid = await owner_with_workspace(server)
        events = await open_events(nursery, api, wid)
        sid = (await create_running(api, events, wid, "keeper"))["id"]
        await api.aclose()
        server.shutdown.set()
        nursery.cancel_scope.cancel()  # the event reader; the server drains by its deadline
    before = await container_of(client, sid)
    assert before.status == "running"

    orphan_id = new_id()
    labels = {LABEL_MANAGED: MANAGED_BY, LABEL_SANDBOX: orphan_id, LABEL_WORKSPACE: wid}
    await in_thread(
        client.containers.run,
        agent_image,
        ["sleep", "600"],
        detach=True,
        init=True,
        name=container_name(orphan_id),
        labels=labels,
        network=NETWORK,
    )
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, settings)
        row = await server.deps.sandboxes.get(sid)
        assert row.status == "running"
        assert await container_of(client, orphan_id) is None
        after = await container_of(client, sid)
        assert after.id == before.id
        assert after.status == "running"
        async with server.client() as api:
            login = await api.post(
                "/api/auth/login", json={"username": "owner", "password": "correct-horse"}
            )
            assert login.status_code == 200, login.text
            assert (await api.delete(f"/api/sandboxes/{sid}")).status_code == 204
        server.shutdown.set()


async def test_missing_image_marks_the_sandbox_failed_with_a_reason(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    dockerd: Daemon,
) -> None:
    """A sandbox whose image the Docker host lacks becomes `failed`, its reason naming the image."""
    settings = docker_server_settings(db_url, tmp_path, "agentserver-missing-image:never")
    server = await start_server(nursery, settings)
    api, wid = await owner_with_workspace(server)
    events = await open_events(nursery, api, wid)
    response = await api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "broken"})
    assert response.status_code == 201, response.text
    done = await events.until(response.json()["id"], "running", "failed")
    assert done["status"] == "failed"
    assert "agentserver-missing-image:never" in done["statusReason"]
    await api.aclose()
    server.shutdown.set()


def test_serve_says_when_the_docker_daemon_is_unreachable(db_url: str, tmp_path: Path) -> None:
    """`agentserver serve --backend docker` with no daemon at DOCKER_HOST exits saying so."""
    env = {
        "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentserver.cli",
            "serve",
            "--backend",
            "docker",
            "--listen",
            "127.0.0.1:0",
            "--db-url",
            db_url,
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "Docker daemon unreachable" in result.stderr
    assert "no-daemon.sock" in result.stderr


async def test_docker_opencode_works_on_the_shared_disk(
    docker_server: Server, nursery: trio.Nursery, client: docker.DockerClient
) -> None:
    """opencode's project folder is /data/disk0, the API says so, and a file one sandbox
    writes there the other sandbox's opencode reads as a path of its project."""
    api, wid = await owner_with_workspace(docker_server)
    events = await open_events(nursery, api, wid)
    first = await create_running(api, events, wid, "a")
    second = await create_running(api, events, wid, "b")
    assert first["diskPath"] == second["diskPath"] == "/data/disk0"
    assert await sh(client, first["id"], "echo from-a > /data/disk0/note.txt") == (0, "")
    async with await through_proxy(docker_server, api, second["id"]) as sub:
        path = await sub.get("/path")
        assert path.status_code == 200, path.text
        assert path.json()["directory"] == "/data/disk0"
        content = await sub.get("/file/content", params={"path": "note.txt"})
        assert content.status_code == 200, content.text
        assert content.json()["content"].strip() == "from-a"
    events.close()
    await api.aclose()
