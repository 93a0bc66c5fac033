"""Two replicas with `--backend docker` on one daemon and one database: a delete on one replica
while the other is starting the sandbox leaves no container, no volume and no row behind."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
import trio

from agentserver.sandboxes.containers import LABEL_SANDBOX, home_volume
from tests.conftest import make_settings, start_server
from tests.integration.test_docker_server import NETWORK, in_thread, volume_exists
from tests.support.cluster import WAIT, sql, workspace
from tests.support.dockerd import Daemon

pytestmark = pytest.mark.docker


async def op_owner(db_url: str, sandbox_id: str) -> str | None:
    rows = await trio.to_thread.run_sync(
        sql, db_url, "SELECT op_owner FROM sandboxes WHERE id = %s", sandbox_id
    )
    return rows[0][0] if rows else None


async def test_a_delete_on_one_replica_during_a_docker_start_on_another_leaves_no_orphan(
    db_url: str, tmp_path: Path, agent_image: str, dockerd: Daemon
) -> None:
    """Replica A starts a Docker sandbox; replica B deletes it while A's start is under way:
    once A's operation is over, no container or home volume of it exists and its row is gone."""
    client = docker.DockerClient(base_url=dockerd.host)
    options = {"backend": "docker", "agent_image": agent_image, "docker_network": NETWORK}
    try:
        async with trio.open_nursery() as nursery:
            first = await start_server(nursery, make_settings(db_url, tmp_path / "a", **options))
            second = await start_server(nursery, make_settings(db_url, tmp_path / "b", **options))
            wid = await workspace(db_url)
            sandbox = await first.deps.sandboxes.create(wid, "raced", "opencode", None)
            with trio.fail_after(WAIT):  # A holds the lease: its start is under way
                while await op_owner(db_url, sandbox.id) != first.deps.cluster.replica_id:
                    await trio.sleep(0.01)
            with trio.fail_after(WAIT):
                await second.deps.sandboxes.delete(sandbox.id)
            with trio.fail_after(WAIT):
                while sandbox.id in first.deps.sandboxes._ops:
                    await trio.sleep(0.05)
            assert await first.deps.sandboxes.get(sandbox.id) is None
            # A's start was under way (the agent takes seconds to answer): A gave it up.
            assert first.deps.sandboxes.leases.given_up == 1
            found = await in_thread(
                client.containers.list, all=True, filters={"label": f"{LABEL_SANDBOX}={sandbox.id}"}
            )
            assert found == []
            assert not await volume_exists(client, home_volume(sandbox.id))
            first.shutdown.set()
            second.shutdown.set()
    finally:
        client.close()
