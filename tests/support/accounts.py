"""Making the people tests act as: an owner signed in with a new workspace."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import register


async def create_workspace(client: httpx.AsyncClient, name: str = "w") -> dict[str, Any]:
    """A new workspace owned by `client`'s signed-in user."""
    created = await client.post("/api/workspaces", json={"name": name})
    assert created.status_code == 201, created.text
    return dict(created.json())


async def add_member(owner: httpx.AsyncClient, workspace_id: str, username: str, role: str) -> None:
    """`owner` adds the registered user `username` to the workspace with `role`."""
    added = await owner.post(
        f"/api/workspaces/{workspace_id}/members", json={"username": username, "role": role}
    )
    assert added.status_code == 201, added.text


async def owner_of_workspace(
    client: httpx.AsyncClient, username: str = "owner", workspace: str = "w"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register and sign in `client` as `username`, who then creates a workspace named
    `workspace`: (the user, the workspace) as the API shows them."""
    user = await register(client, username)
    return user, await create_workspace(client, workspace)
