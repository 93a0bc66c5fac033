"""What the server admin can do to users: disable and enable them, reset their password, and
see every sandbox; nobody else can."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.conftest import Server, register
from tests.integration import test_github_oauth as github_flow
from tests.integration import test_oidc as oidc_flow
from tests.integration.test_sandbox_sign_out import PASSWORD, sandbox_ok
from tests.support.github import GitHub
from tests.support.oidc_provider import OpenIDProvider
from tests.support.proxy_world import World

# The GitHub and OIDC stand-ins, as their own tests start them.
github = github_flow.github
idp = oidc_flow.idp


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> int:
    response = await client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    return response.status_code


async def test_only_the_admin_may_use_the_admin_routes(server: Server) -> None:
    """Every new admin route is a 403 for a signed-in non-admin and a 401 without a session,
    and changes nothing."""
    async with server.client() as root, server.client() as bob, server.client() as anon:
        await register(root, "root")
        root_id = (await root.get("/api/auth/me")).json()["id"]
        await register(bob, "bob")
        calls = [
            ("GET", "/api/admin/users", None),
            ("GET", "/api/admin/sandboxes", None),
            ("POST", f"/api/admin/users/{root_id}/disable", None),
            ("POST", f"/api/admin/users/{root_id}/enable", None),
            ("POST", f"/api/admin/users/{root_id}/password", {"password": "bob-owns-it-now"}),
        ]
        for method, path, body in calls:
            refused = await bob.request(method, path, json=body)
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["error"]["code"] == "forbidden"
            assert (await anon.request(method, path, json=body)).status_code == 401, path
        assert (await root.get("/api/auth/me")).status_code == 200
        assert await login(anon, "root") == 200


async def test_a_disabled_user_is_signed_out_everywhere_and_cannot_sign_in(world: World) -> None:
    """Disabling a user ends their sessions and sandbox cookies at once and refuses their
    password; enabling them again lets them sign in (the old sessions stay ended)."""
    sid = await world.sandbox()
    async with world.server.client() as dev, world.server.client() as again:
        dev_id = (await register(dev, "dev"))["id"]
        added = await world.owner.post(
            f"/api/workspaces/{world.workspace_id}/members",
            json={"username": "dev", "role": "developer"},
        )
        assert added.status_code == 201
        cookie = await world.open(sid, dev)
        assert await sandbox_ok(world, sid, cookie)
        disabled = await world.owner.post(f"/api/admin/users/{dev_id}/disable")
        assert disabled.status_code == 200, disabled.text
        assert disabled.json()["disabled"] is True
        assert (await dev.get("/api/auth/me")).status_code == 401
        assert not await sandbox_ok(world, sid, cookie)
        refused = await again.post(
            "/api/auth/login", json={"username": "dev", "password": PASSWORD}
        )
        assert refused.status_code == 403, refused.text
        assert "disabled" in refused.json()["error"]["message"]
        users = {u["username"]: u for u in (await world.owner.get("/api/admin/users")).json()}
        assert users["dev"]["disabled"] is True
        assert users["owner"]["disabled"] is False
        enabled = await world.owner.post(f"/api/admin/users/{dev_id}/enable")
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["disabled"] is False
        assert (await dev.get("/api/auth/me")).status_code == 401
        assert not await sandbox_ok(world, sid, cookie)
        assert await login(again, "dev") == 200


async def test_the_admin_cannot_disable_themselves(server: Server) -> None:
    """The last active admin (here: the one asking) cannot be disabled; unknown users are 404."""
    async with server.client() as root:
        root_id = (await register(root, "root"))["id"]
        refused = await root.post(f"/api/admin/users/{root_id}/disable")
        assert refused.status_code == 409, refused.text
        assert (await root.get("/api/auth/me")).status_code == 200
        assert (await root.post("/api/admin/users/nobody/disable")).status_code == 404


async def disable(actor: httpx.AsyncClient, target: str, statuses: list[int]) -> None:
    statuses.append((await actor.post(f"/api/admin/users/{target}/disable")).status_code)


async def test_two_admins_disabling_each_other_at_once_leave_one(server: Server) -> None:
    """Round after round, two admins disabling each other at the same moment: exactly one
    request wins and one active admin is left."""
    async with server.client() as root:
        await register(root, "root")
        ids = {}
        for name in ("alice", "bob"):
            async with server.client() as user:
                ids[name] = (await register(user, name))["id"]
            promoted = await root.put(f"/api/admin/users/{ids[name]}/role", json={"role": "admin"})
            assert promoted.status_code == 200
        for _ in range(4):
            async with server.client() as a, server.client() as b:
                assert await login(a, "alice") == 200
                assert await login(b, "bob") == 200
                statuses: list[int] = []

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(disable, a, ids["bob"], statuses)
                    nursery.start_soon(disable, b, ids["alice"], statuses)
                assert sorted(statuses) in ([200, 401], [200, 403]), statuses
            users = (await root.get("/api/admin/users")).json()
            disabled = [u["username"] for u in users if u["disabled"]]
            assert len(disabled) == 1, users
            enabled = await root.post(f"/api/admin/users/{ids[disabled[0]]}/enable")
            assert enabled.status_code == 200


async def test_an_admin_sets_a_password_that_must_pass_the_rules(server: Server) -> None:
    """A password the admin types must pass registration's rules; a good one replaces the old
    password and ends the user's sessions."""
    async with server.client() as root, server.client() as bob, server.client() as fresh:
        await register(root, "root")
        bob_id = (await register(bob, "bob"))["id"]
        for bad, words in (
            ("short", "at least 8"),
            ("password123", "common"),
            ("Bob", "at least 8"),
        ):
            refused = await root.post(f"/api/admin/users/{bob_id}/password", json={"password": bad})
            assert refused.status_code == 400, refused.text
            assert words in refused.json()["error"]["message"]
        same = await root.post(
            f"/api/admin/users/{bob_id}/password", json={"password": "bobbobbob"}
        )
        assert same.status_code == 200, same.text  # not the username itself
        by_name = await root.post(
            f"/api/admin/users/{bob_id}/password", json={"password": "BOB-the-user"}
        )
        assert by_name.status_code == 200
        assert (await bob.get("/api/auth/me")).status_code == 401
        reset = await root.post(
            f"/api/admin/users/{bob_id}/password", json={"password": "a-new-start-42"}
        )
        assert reset.status_code == 200, reset.text
        assert reset.json() == {"password": None}
        assert await login(fresh, "bob") == 401
        assert await login(fresh, "bob", "a-new-start-42") == 200


async def test_the_password_may_not_be_the_username(server: Server) -> None:
    """An admin's chosen password equal to the username is refused with the rule's message."""
    async with server.client() as root, server.client() as user:
        await register(root, "root")
        user_id = (await register(user, "longusername"))["id"]
        refused = await root.post(
            f"/api/admin/users/{user_id}/password", json={"password": "LongUsername"}
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "the password must not be the username"


async def test_a_generated_password_is_shown_once_and_works(server: Server) -> None:
    """Without a password in the body the server makes one up, answers it, and it signs in."""
    async with server.client() as root, server.client() as bob, server.client() as fresh:
        await register(root, "root")
        bob_id = (await register(bob, "bob"))["id"]
        reset = await root.post(f"/api/admin/users/{bob_id}/password", json={})
        assert reset.status_code == 200, reset.text
        password = reset.json()["password"]
        assert isinstance(password, str)
        assert len(password) >= 16
        assert (await bob.get("/api/auth/me")).status_code == 401
        assert await login(fresh, "bob", password) == 200
        assert await login(fresh, "bob") == 401
        own = await root.post(
            f"/api/admin/users/{(await root.get('/api/auth/me')).json()['id']}/password",
            json={},
        )
        assert own.status_code == 409


async def test_the_admin_sees_every_sandbox(world: World) -> None:
    """`GET /api/admin/sandboxes` lists sandboxes of workspaces the admin is not in, with the
    workspace's name, the creator, status and type."""
    async with world.server.client() as dev:
        dev_id = (await register(dev, "dev"))["id"]
        theirs = (await dev.post("/api/workspaces", json={"name": "devs-own"})).json()
        await world.sql(
            "INSERT INTO sandboxes (id, workspace_id, name, type, status, agent_secret,"
            " created_by) VALUES ('sbx-of-dev', %s, 'dev-box', 'openclaw', 'paused', 's', %s)",
            theirs["id"],
            dev_id,
        )
    mine = await world.sandbox()
    listed = await world.owner.get("/api/admin/sandboxes")
    assert listed.status_code == 200, listed.text
    by_id = {s["id"]: s for s in listed.json()}
    assert set(by_id) == {mine, "sbx-of-dev"}
    dev_box = by_id["sbx-of-dev"]
    assert (dev_box["name"], dev_box["workspaceName"], dev_box["creator"]) == (
        "dev-box",
        "devs-own",
        "dev",
    )
    assert (dev_box["status"], dev_box["type"]) == ("paused", "openclaw")
    assert by_id[mine]["workspaceName"] == "w"


async def test_a_disabled_user_cannot_sign_in_with_oidc(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A disabled account that signs in through an OIDC provider gets a refusal page, no
    session; its old session is already gone."""
    server = await oidc_flow.start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as root:
        await register(root, "root")
        async with server.client() as alice:
            await alice.get(await oidc_flow.to_provider(alice))
            me = await alice.get("/api/auth/me")
            assert me.status_code == 200
            disabled = await root.post(f"/api/admin/users/{me.json()['id']}/disable")
            assert disabled.status_code == 200
            assert (await alice.get("/api/auth/me")).status_code == 401
        response, user = await oidc_flow.sign_in(server)
    oidc_flow.assert_refused(response, 403, "disabled")
    assert user is None


async def test_a_disabled_user_cannot_sign_in_with_github(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """A disabled account that signs in with GitHub is refused, with no session."""
    server = await github_flow.start(nursery, db_url, tmp_path, github)
    async with server.client() as root:
        await register(root, "root")
        response, user = await github_flow.sign_in(server)
        assert user is not None
        disabled = await root.post(f"/api/admin/users/{user['id']}/disable")
        assert disabled.status_code == 200
        response, after = await github_flow.sign_in(server)
    github_flow.assert_refused(response, 403, "disabled")
    assert after is None
