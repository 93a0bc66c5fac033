"""The authorization matrix: every workspace- and sandbox-scoped route, run as every kind of caller.

HOW TO ADD A ROUTE: add one `(METHOD, "<url rule exactly as in app.url_map>")` row to MATRIX with
the roles allowed. If the handler needs state (a sandbox id, a body), give the row a `Case`
with `body=` and/or `setup=` (an async function that receives the `World` and returns extra path
values, e.g. {"sandbox_id": ...}). `test_every_scoped_route_has_a_row` fails when a route under
/api/workspaces/<...> or /api/sandboxes/<...> exists without a row (or a row names no route).

Expected answers: an allowed caller gets a 2xx/3xx (or one of `Case.ok`, for domain answers such
as 409 "not running"); a denied member gets 403; a non-member gets 404 (the same as a workspace
that does not exist: nothing leaks); an anonymous caller gets 401.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from agentserver.api.app import create_app
from tests.conftest import Server, register

OWNER, MAINTAINER, DEVELOPER, GUEST = "owner", "maintainer", "developer", "guest"
NON_MEMBER, ANONYMOUS = "non-member", "anonymous"
CALLERS = (OWNER, MAINTAINER, DEVELOPER, GUEST, NON_MEMBER, ANONYMOUS)
ANY_MEMBER = frozenset({OWNER, MAINTAINER, DEVELOPER, GUEST})
DEVELOPER_UP = frozenset({OWNER, MAINTAINER, DEVELOPER})
MAINTAINER_UP = frozenset({OWNER, MAINTAINER})
OWNER_ONLY = frozenset({OWNER})


@dataclass
class World:
    """One fresh workspace with one member per role, plus a target member and an outsider."""

    server: Server
    clients: dict[str, httpx.AsyncClient]
    users: dict[str, dict[str, Any]]
    workspace_id: str

    def path_values(self) -> dict[str, str]:
        """Values for the common path parameters; a Case's setup can add more."""
        return {"workspace_id": self.workspace_id, "user_id": self.users["target"]["id"]}


Setup = Callable[[World], Awaitable[dict[str, str]]]


@dataclass(frozen=True)
class Case:
    """What a row needs beyond its allowed roles: a body, extra statuses, per-route state."""

    allowed: frozenset[str]
    body: dict[str, Any] | None = None
    ok: frozenset[int] = field(default_factory=frozenset)
    setup: Setup | None = None
    stream: bool = False  # an event stream: only the status line is read


def body_adding_outsider(role: str) -> dict[str, Any]:
    return {"username": "zz-outsider", "role": role}


async def with_sandbox(world: World, creator: str = OWNER) -> dict[str, str]:
    """A sandbox in the world's workspace, created by its owner (or `creator`)."""
    response = await world.clients[creator].post(
        f"/api/workspaces/{world.workspace_id}/sandboxes", json={"name": "matrix"}
    )
    assert response.status_code == 201, response.text
    return {"sandbox_id": response.json()["id"]}


async def with_developers_sandbox(world: World) -> dict[str, str]:
    """A sandbox created by the world's developer: developers manage their own sandboxes
    (someone else's only if the workspace allows it: see test_private_sandboxes.py)."""
    return await with_sandbox(world, DEVELOPER)


async def with_sandbox_port(world: World) -> dict[str, str]:
    """A sandbox of the owner's and a port of it that may be previewed."""
    return {**await with_sandbox(world), "port": "5173"}


# ---------------------------------------------------------------------------------------------
# THE TABLE. Key = (METHOD, url rule as in app.url_map). Value = allowed roles or a Case.
# ---------------------------------------------------------------------------------------------
MATRIX: dict[tuple[str, str], frozenset[str] | Case] = {
    # workspaces (api/workspaces.py)
    ("GET", "/api/workspaces/<workspace_id>"): ANY_MEMBER,
    ("PATCH", "/api/workspaces/<workspace_id>"): Case(MAINTAINER_UP, body={"name": "Renamed"}),
    ("DELETE", "/api/workspaces/<workspace_id>"): OWNER_ONLY,
    # members (api/members.py)
    ("GET", "/api/workspaces/<workspace_id>/members"): ANY_MEMBER,
    ("POST", "/api/workspaces/<workspace_id>/members"): Case(
        MAINTAINER_UP, body=body_adding_outsider("developer")
    ),
    ("PUT", "/api/workspaces/<workspace_id>/members/<user_id>"): Case(
        OWNER_ONLY, body={"role": "guest"}
    ),
    ("DELETE", "/api/workspaces/<workspace_id>/members/<user_id>"): OWNER_ONLY,
    # LLM usage (api/usage.py)
    ("GET", "/api/workspaces/<workspace_id>/usage"): ANY_MEMBER,
    # sandboxes (api/sandboxes.py); without opencode on PATH the setup's sandbox fails at once
    ("GET", "/api/workspaces/<workspace_id>/sandboxes"): ANY_MEMBER,
    ("POST", "/api/workspaces/<workspace_id>/sandboxes"): Case(DEVELOPER_UP, body={"name": "m"}),
    ("GET", "/api/workspaces/<workspace_id>/events"): Case(ANY_MEMBER, stream=True),
    ("GET", "/api/sandboxes/<sandbox_id>"): Case(ANY_MEMBER, setup=with_sandbox),
    ("DELETE", "/api/sandboxes/<sandbox_id>"): Case(DEVELOPER_UP, setup=with_developers_sandbox),
    ("POST", "/api/sandboxes/<sandbox_id>/pause"): Case(
        DEVELOPER_UP, setup=with_developers_sandbox, ok=frozenset({409})
    ),
    ("POST", "/api/sandboxes/<sandbox_id>/resume"): Case(
        DEVELOPER_UP, setup=with_developers_sandbox, ok=frozenset({409})
    ),
    # renaming and making private: its creator (the developer here), owners and maintainers
    # (someone else's sandbox: see test_private_sandboxes.py and test_sandbox_manage_api.py)
    ("PATCH", "/api/sandboxes/<sandbox_id>"): Case(
        DEVELOPER_UP, setup=with_developers_sandbox, body={"name": "renamed", "private": True}
    ),
    ("POST", "/api/sandboxes/<sandbox_id>/restart"): Case(
        DEVELOPER_UP, setup=with_developers_sandbox, ok=frozenset({409})
    ),
    ("GET", "/api/sandboxes/<sandbox_id>/logs"): Case(DEVELOPER_UP, setup=with_sandbox),
    # subdomain proxy (api/sandbox_open.py): a 302 with a one-time ticket; guests too (read-only)
    ("GET", "/api/sandboxes/<sandbox_id>/open"): Case(ANY_MEMBER, setup=with_sandbox),
    # its variables' names and repository: whoever may open it
    ("GET", "/api/sandboxes/<sandbox_id>/setup"): Case(ANY_MEMBER, setup=with_sandbox),
    # previews (api/previews.py): listed for whoever may open the sandbox; a port made public or
    # private by a member who may use it (never a guest)
    ("GET", "/api/sandboxes/<sandbox_id>/previews"): Case(ANY_MEMBER, setup=with_sandbox),
    ("PUT", "/api/sandboxes/<sandbox_id>/previews/<port>/public"): Case(
        DEVELOPER_UP, setup=with_sandbox_port
    ),
    ("DELETE", "/api/sandboxes/<sandbox_id>/previews/<port>/public"): Case(
        DEVELOPER_UP, setup=with_sandbox_port
    ),
    # local agents (api/agents.py): a one-time registration code
    ("POST", "/api/workspaces/<workspace_id>/agent-code"): DEVELOPER_UP,
    # sandboxes, agent codes, usage, events: add rows here (see the module docstring).
}

SCOPED = re.compile(r"^/api/(workspaces|sandboxes)/<")

# Routes about the caller's own account (no workspace): any signed-in user may call them for
# themselves, anonymous callers get 401. Value: the body to send.
ACCOUNT: dict[tuple[str, str], dict[str, Any] | None] = {
    ("GET", "/api/auth/sessions"): None,
    ("POST", "/api/auth/logout-all"): None,
    ("POST", "/api/auth/password"): {
        "currentPassword": "correct-horse",
        "newPassword": "correct-horse-2",
    },
}


def live_routes(server: Server) -> set[tuple[str, str]]:
    """(METHOD, rule) for every scoped route of an app built from the running server's Deps."""
    app = create_app(server.deps)
    found = set()
    for rule in app.url_map.iter_rules():
        if SCOPED.match(rule.rule):
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    found.add((method, rule.rule))
    return found


def case_of(entry: frozenset[str] | Case) -> Case:
    return entry if isinstance(entry, Case) else Case(entry)


def fill(rule: str, values: dict[str, str]) -> str:
    """The URL for `rule` with its `<name>`/`<conv:name>` parts replaced from `values`."""
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule)


def expected(case: Case, caller: str) -> str:
    if caller in case.allowed:
        return "allowed"
    return {ANONYMOUS: "401", NON_MEMBER: "404"}.get(caller, "403")


def verdict(status: int, case: Case) -> str:
    if 200 <= status < 400 or status in case.ok:
        return "allowed"
    return str(status)


ROLE_USERS = (OWNER, MAINTAINER, DEVELOPER, GUEST, "target", NON_MEMBER, "zz-outsider")
WORLD_NUMBERS = itertools.count(1)


async def make_users(server: Server) -> tuple[dict[str, httpx.AsyncClient], dict[str, Any]]:
    clients = {name: server.client() for name in ROLE_USERS}
    users = {name: await register(clients[name], name) for name in ROLE_USERS}
    clients[ANONYMOUS] = server.client()
    return clients, users


async def make_world(
    server: Server, clients: dict[str, httpx.AsyncClient], users: dict[str, Any]
) -> World:
    """A new workspace owned by `owner`, with maintainer, developer, guest and target members."""
    # A user's workspace names are unique: each world gets its own.
    created = await clients[OWNER].post(
        "/api/workspaces", json={"name": f"matrix-{next(WORLD_NUMBERS)}"}
    )
    assert created.status_code == 201, created.text
    wid = created.json()["id"]
    for name, role in (
        (MAINTAINER, "maintainer"),
        (DEVELOPER, "developer"),
        (GUEST, "guest"),
        ("target", "developer"),
    ):
        added = await clients[OWNER].post(
            f"/api/workspaces/{wid}/members",
            json={"username": users[name]["username"], "role": role},
        )
        assert added.status_code == 201, added.text
    return World(server, clients, users, wid)


async def call(client: httpx.AsyncClient, method: str, url: str, case: Case) -> int:
    async with client.stream(method, url, json=case.body) as response:
        if not case.stream:
            await response.aread()
        return response.status_code


async def test_every_scoped_route_has_a_row(server: Server) -> None:
    """The table lists exactly the live workspace/sandbox routes, so a new route must add a row."""
    live = live_routes(server)
    missing = sorted(live - MATRIX.keys())
    stale = sorted(MATRIX.keys() - live)
    assert not missing, f"routes without a row in MATRIX: {missing}"
    assert not stale, f"rows in MATRIX for routes that do not exist: {stale}"


async def test_every_route_as_every_caller(server: Server) -> None:
    """Each scoped route answers each role as the table says: allowed, 403, 404 or 401."""
    clients, users = await make_users(server)
    wrong: list[str] = []
    try:
        for (method, rule), entry in sorted(MATRIX.items()):
            case = case_of(entry)
            for caller in CALLERS:
                world = await make_world(server, clients, users)  # fresh: routes may delete things
                values = world.path_values()
                if case.setup is not None:
                    values.update(await case.setup(world))
                status = await call(clients[caller], method, fill(rule, values), case)
                # Each world is used once. Deleting it frees its name: the owner's names are
                # unique, and the next world's rename to "Renamed" must not collide with it.
                await clients[OWNER].delete(f"/api/workspaces/{world.workspace_id}")
                want, got = expected(case, caller), verdict(status, case)
                if want != got:
                    wrong.append(f"{method} {rule} as {caller}: expected {want}, got {status}")
    finally:
        with trio.CancelScope(shield=True):
            for client in clients.values():
                await client.aclose()
    assert not wrong, "\n".join(wrong)


async def test_account_routes_need_a_session_and_nothing_more(server: Server) -> None:
    """Each account route answers 401 to an anonymous caller and 2xx to any signed-in user
    acting on their own account (a fresh user per row: these routes end sessions)."""
    wrong: list[str] = []
    for n, ((method, rule), body) in enumerate(sorted(ACCOUNT.items())):
        async with server.client() as anonymous, server.client() as user:
            await register(user, f"account{n}")
            denied = await anonymous.request(method, rule, json=body)
            allowed = await user.request(method, rule, json=body)
        if denied.status_code != 401:
            wrong.append(f"{method} {rule} as anonymous: expected 401, got {denied.status_code}")
        if not 200 <= allowed.status_code < 300:
            wrong.append(f"{method} {rule} as its user: got {allowed.status_code}")
    assert not wrong, "\n".join(wrong)
