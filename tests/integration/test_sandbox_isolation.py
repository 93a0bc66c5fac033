"""Sandboxes without working bubblewrap: refused unless the operator allows it, and then shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agentserver.sandboxes import process as process_backend
from agentserver.sandboxes.isolation import Isolation
from agentserver.settings import Settings
from tests.conftest import start_server
from tests.support.sandboxes import (
    open_events,
    owner_with_workspace,
    processes_of,
    sandbox_settings_for,
)

PROBLEM = "bubblewrap does not work here (test)"


@pytest.fixture
def no_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The isolation probe finds bubblewrap unusable, as on a host without user namespaces."""

    async def unusable(*args: object) -> Isolation:
        await trio.lowlevel.checkpoint()
        return Isolation(problem=PROBLEM)

    monkeypatch.setattr(process_backend, "probe_isolation", unusable)


def keyed(db_url: str, data_dir: Path, opencode_bin: str, **overrides: str) -> Settings:
    """Sandbox settings with an Anthropic key, so the admin's only warnings are isolation's."""
    return sandbox_settings_for(
        db_url, data_dir, opencode_bin, anthropic_api_key="sk-ant-test", **overrides
    )


@pytest.mark.usefixtures("no_bubblewrap")
async def test_without_isolation_sandboxes_are_refused_and_signed_in_users_told(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """Without bubblewrap and without --allow-unisolated-sandboxes a new sandbox fails, naming
    the flag, no agent process starts, and /api/auth/config warns signed-in users only."""
    server = await start_server(nursery, keyed(db_url, tmp_path / "d", opencode_bin))
    anonymous = server.client()
    assert (await anonymous.get("/api/auth/config")).json()["warnings"] == []
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    failed = await events.until(sid, "failed", "running")
    assert failed["status"] == "failed"
    sandbox = (await client.get(f"/api/sandboxes/{sid}")).json()
    assert "--allow-unisolated-sandboxes" in sandbox["statusReason"]
    assert PROBLEM in sandbox["statusReason"]
    assert processes_of(sid) == []
    (warning,) = (await client.get("/api/auth/config")).json()["warnings"]
    assert "cannot start" in warning
    assert "--allow-unisolated-sandboxes" in warning
    events.close()
    for each in (client, anonymous):
        await each.aclose()
    server.shutdown.set()


@pytest.mark.usefixtures("no_bubblewrap")
async def test_allowed_unisolated_sandboxes_run_with_a_warning(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """With --allow-unisolated-sandboxes a sandbox runs without bubblewrap, and signed-in users
    are warned that sandboxes are not isolated."""
    settings = keyed(db_url, tmp_path / "d", opencode_bin, allow_unisolated_sandboxes="true")
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box"})
    sid = created.json()["id"]
    assert (await events.until(sid, "running", "failed"))["status"] == "running"
    (warning,) = (await client.get("/api/auth/config")).json()["warnings"]
    assert "without isolation" in warning
    assert PROBLEM in warning
    events.close()
    await client.aclose()
    server.shutdown.set()


async def test_with_bubblewrap_there_is_no_warning(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """Where bubblewrap works, signed-in users see no warning."""
    server = await start_server(nursery, keyed(db_url, tmp_path / "d", opencode_bin))
    if not server.deps.sandboxes.backend.isolation.enabled:
        pytest.skip("bubblewrap does not work on this machine")
    client, _ = await owner_with_workspace(server)
    assert (await client.get("/api/auth/config")).json()["warnings"] == []
    await client.aclose()
    server.shutdown.set()
