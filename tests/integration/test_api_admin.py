"""Server administration over real HTTP: the server never ends up without an admin."""

from __future__ import annotations

import httpx
import trio

from agentserver.models import User
from tests.conftest import Server, register


async def admins(server: Server) -> set[str]:
    """Usernames of the server admins, read from the database."""
    users = await server.deps.db.many("list_users", User)
    return {u.username for u in users if u.role == "admin"}


async def test_two_admins_demoting_each_other_at_once_leave_one(server: Server) -> None:
    """Round after round of two admins demoting each other at the same moment, one stays admin."""
    async with server.client() as root, server.client() as a, server.client() as b:
        await register(root, "root")
        ids = {"a": (await register(a, "alice"))["id"], "b": (await register(b, "bob"))["id"]}
        await root.put(f"/api/admin/users/{ids['a']}/role", json={"role": "admin"})
        for _ in range(6):
            # alice and bob are both admins; root steps down so only they remain.
            for name in ("a", "b"):
                promoted = await root.put(
                    f"/api/admin/users/{ids[name]}/role", json={"role": "admin"}
                )
                assert promoted.status_code == 200, promoted.text
            statuses: dict[str, int] = {}

            async def demote(
                actor: httpx.AsyncClient, target: str, key: str, into: dict[str, int]
            ) -> None:
                response = await actor.put(f"/api/admin/users/{target}/role", json={"role": "user"})
                into[key] = response.status_code

            root_id = (await root.get("/api/auth/me")).json()["id"]
            assert (
                await a.put(f"/api/admin/users/{root_id}/role", json={"role": "user"})
            ).status_code == 200
            async with trio.open_nursery() as nursery:
                nursery.start_soon(demote, a, ids["b"], "a", statuses)
                nursery.start_soon(demote, b, ids["a"], "b", statuses)
            left = await admins(server)
            assert len(left) == 1, (statuses, left)
            assert sorted(statuses.values()) == [200, 403], statuses
            # The one left makes root admin again for the next round.
            survivor = a if left == {"alice"} else b
            restored = await survivor.put(
                f"/api/admin/users/{root_id}/role", json={"role": "admin"}
            )
            assert restored.status_code == 200
