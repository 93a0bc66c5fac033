"""The authorization matrix: every workspace- and sandbox-scoped route, run as every kind of caller.

HOW TO ADD A ROUTE: add one `(METHOD, "<url rule exactly as in app.url_map>")` row to MATRIX with
the roles allowed. If the handler needs state (a sandbox id, a body), give the row a `Case`
with `body=` and/or `setup=` (an async function that receives the `World` and returns extra path
values, e.g. {"sandbox_id": ...}). `test_every_scoped_route_has_a_row` fails when a route under
/api/workspaces/<...> or /api/sandboxes/<...> exists without a row (or a row names no route).
Every other /api route needs a row in TOKEN_ROUTES (what an API token may do there): every route
is also called with a read, a full, a workspace-limited, an expired and a revoked token
(`test_every_api_route_has_a_token_row`, `test_every_route_with_every_kind_of_token`).

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
import psycopg
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


SANDBOX_NUMBERS = itertools.count(1)  # a world may hold several (the token test shares one)


async def with_sandbox(world: World, creator: str = OWNER) -> dict[str, str]:
    """A sandbox in the world's workspace, created by its owner (or `creator`)."""
    response = await world.clients[creator].post(
        f"/api/workspaces/{world.workspace_id}/sandboxes",
        json={"name": f"matrix-{next(SANDBOX_NUMBERS)}"},
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
    # the command line's one-time link to open it in a signed-in browser (api/sandbox_open.py)
    ("POST", "/api/sandboxes/<sandbox_id>/launch"): Case(ANY_MEMBER, setup=with_sandbox),
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


# ---------------------------------------------------------------------------------------------
# API TOKENS. Every /api route is also called with each kind of bearer token of the owner (who
# is the server admin: the first user). Workspace and sandbox routes follow MATRIX (the owner
# may call every one of them); every other /api route needs a TOKEN_ROUTES row saying how far
# a token reaches there:
#   ACCOUNT  the caller's own things: any working token (a read one: GET only)
#   WIDE     beyond one workspace (admin pages, new workspaces): not a workspace-limited token
#   SESSION  a browser session only (password, sessions, tokens, approvals): every token 403
#   PUBLIC   no sign-in at all: a token changes nothing (the same answer as without one)
# A token that does not work (expired, revoked) gets 401 wherever a sign-in counts.
# ---------------------------------------------------------------------------------------------
ACCOUNT_REACH, WIDE, SESSION, PUBLIC, WORKSPACE = "account", "wide", "session", "public", "ws"
READ, FULL, LIMITED, ELSEWHERE, EXPIRED, REVOKED = (
    "read",
    "full",
    "limited to this workspace",
    "limited to another workspace",
    "expired",
    "revoked",
)
TOKEN_KINDS = (READ, FULL, LIMITED, ELSEWHERE, EXPIRED, REVOKED)


@dataclass(frozen=True)
class TokenRow:
    """How far a token reaches on a route that is not workspace- or sandbox-scoped."""

    reach: str
    body: dict[str, Any] | None = None
    setup: Setup | None = None
    ok: frozenset[int] = field(default_factory=frozenset)


async def with_victim(world: World) -> dict[str, str]:
    """A user the admin routes act on (not one of the world's members)."""
    return {"user_id": world.users["victim"]["id"]}


async def with_other_token(world: World) -> dict[str, str]:
    """Another token of the owner (a token may not revoke it)."""
    made = await world.clients[OWNER].post("/api/tokens", json={"name": "another"})
    assert made.status_code == 201, made.text
    return {"token_id": made.json()["id"]}


TOKEN_ROUTES: dict[tuple[str, str], TokenRow] = {
    # the caller's account (api/auth.py)
    ("GET", "/api/auth/config"): TokenRow(ACCOUNT_REACH),
    ("GET", "/api/auth/me"): TokenRow(ACCOUNT_REACH),
    ("POST", "/api/auth/logout"): TokenRow(SESSION),
    ("POST", "/api/auth/logout-all"): TokenRow(SESSION),
    ("POST", "/api/auth/password"): TokenRow(SESSION, body=ACCOUNT[("POST", "/api/auth/password")]),
    ("GET", "/api/auth/sessions"): TokenRow(SESSION),
    ("DELETE", "/api/auth/sessions/<session_id>"): TokenRow(SESSION),
    # signing in (api/auth.py, api/oidc.py): bodies that are refused before anyone signs in
    ("POST", "/api/auth/login"): TokenRow(PUBLIC),
    ("POST", "/api/auth/register"): TokenRow(PUBLIC),
    ("GET", "/api/auth/providers"): TokenRow(PUBLIC),
    ("GET", "/api/auth/oidc/<provider_id>"): TokenRow(PUBLIC),
    ("GET", "/api/auth/oidc/<provider_id>/callback"): TokenRow(PUBLIC),
    # workspaces (api/workspaces.py)
    ("GET", "/api/workspaces"): TokenRow(ACCOUNT_REACH),
    ("POST", "/api/workspaces"): TokenRow(WIDE, body={"name": "by-token"}, ok=frozenset({409})),
    # tokens (api/tokens.py)
    ("GET", "/api/tokens"): TokenRow(ACCOUNT_REACH),
    ("POST", "/api/tokens"): TokenRow(SESSION, body={"name": "minted"}),
    ("DELETE", "/api/tokens/<token_id>"): TokenRow(SESSION, setup=with_other_token),
    ("GET", "/api/admin/tokens"): TokenRow(WIDE),
    ("DELETE", "/api/admin/tokens/<token_id>"): TokenRow(SESSION, setup=with_other_token),
    ("POST", "/api/cli-login"): TokenRow(PUBLIC),
    ("POST", "/api/cli-login/poll"): TokenRow(PUBLIC),
    ("GET", "/api/cli-login/pending"): TokenRow(SESSION),
    ("POST", "/api/cli-login/approve"): TokenRow(SESSION, body={"code": "not-a-code"}),
    # server admin (api/admin.py, api/usage.py)
    ("GET", "/api/admin/users"): TokenRow(WIDE),
    ("PUT", "/api/admin/users/<user_id>/role"): TokenRow(
        WIDE, body={"role": "user"}, setup=with_victim
    ),
    ("POST", "/api/admin/users/<user_id>/disable"): TokenRow(WIDE, setup=with_victim),
    ("POST", "/api/admin/users/<user_id>/enable"): TokenRow(WIDE, setup=with_victim),
    ("POST", "/api/admin/users/<user_id>/password"): TokenRow(
        WIDE, body={"password": "a-new-horse-battery"}, setup=with_victim
    ),
    ("GET", "/api/admin/workspaces"): TokenRow(WIDE),
    ("GET", "/api/admin/sandboxes"): TokenRow(WIDE),
    ("GET", "/api/admin/workspaces/<workspace_id>/quota"): TokenRow(WIDE),
    ("PUT", "/api/admin/workspaces/<workspace_id>/quota"): TokenRow(WIDE, body={"rpm": 10}),
    ("DELETE", "/api/admin/workspaces/<workspace_id>/quota"): TokenRow(WIDE),
    # local agents (api/agents.py, api/downloads.py): their own credentials, never ours
    ("GET", "/api/agent/install"): TokenRow(PUBLIC),
    ("POST", "/api/agent/register"): TokenRow(PUBLIC),
    ("GET", "/api/tunnel/<sandbox_id>"): TokenRow(PUBLIC),
}

# Path values for routes whose object does not matter to the answer (it does not exist).
DUMMY_VALUES = {"session_id": "none", "provider_id": "none", "sandbox_id": "none"}

# Scoped routes a token may never use, whatever its reach: a browser's way into a sandbox.
SESSION_SCOPED = frozenset({("GET", "/api/sandboxes/<sandbox_id>/open")})


def api_routes(server: Server) -> set[tuple[str, str]]:
    """(METHOD, rule) for every /api route of an app built from the running server's Deps."""
    app = create_app(server.deps)
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def token_expected(kind: str, reach: str, method: str) -> str:
    """What a token of `kind` gets on a route of `reach` (the owner's role allows the call)."""
    if reach == PUBLIC:
        return "as anonymous"
    if kind in (EXPIRED, REVOKED):
        return "401"
    if reach == SESSION or (kind == READ and method != "GET"):
        return "403"
    if reach == WIDE and kind in (LIMITED, ELSEWHERE):
        return "403"
    if reach == WORKSPACE and kind == ELSEWHERE:
        return "404"
    return "allowed"


async def test_every_api_route_has_a_token_row(server: Server) -> None:
    """Every /api route is in MATRIX (scoped) or TOKEN_ROUTES, and every row names a route, so
    a new route must say what an API token may do there."""
    live = api_routes(server)
    covered = MATRIX.keys() | TOKEN_ROUTES.keys()
    assert not sorted(live - covered), f"routes without a token row: {sorted(live - covered)}"
    stale = sorted(TOKEN_ROUTES.keys() - live)
    assert not stale, f"TOKEN_ROUTES rows for routes that do not exist: {stale}"


@dataclass
class Tokens:
    """The owner's bearer tokens of every kind; LIMITED is made for each world's workspace."""

    owner: httpx.AsyncClient
    db_url: str
    fixed: dict[str, str] = field(default_factory=dict)

    async def mint(self, **body: Any) -> dict[str, Any]:
        made = await self.owner.post("/api/tokens", json={"name": "matrix", **body})
        assert made.status_code == 201, made.text
        return dict(made.json())

    async def prepare(self, elsewhere: str) -> None:
        self.fixed[READ] = (await self.mint(scope="read"))["token"]
        self.fixed[FULL] = (await self.mint())["token"]
        self.fixed[ELSEWHERE] = (await self.mint(workspaceId=elsewhere))["token"]
        expired = await self.mint()
        self.fixed[EXPIRED] = expired["token"]
        revoked = await self.mint()
        self.fixed[REVOKED] = revoked["token"]
        assert (await self.owner.delete(f"/api/tokens/{revoked['id']}")).status_code == 204

        def expire() -> None:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = %s",
                    (expired["id"],),
                )

        await trio.to_thread.run_sync(expire)

    async def of(self, kind: str, world: World) -> str:
        if kind == LIMITED:
            key = f"{LIMITED}:{world.workspace_id}"
            if key not in self.fixed:
                self.fixed[key] = (await self.mint(workspaceId=world.workspace_id))["token"]
            return self.fixed[key]
        return self.fixed[kind]


async def token_call(
    server: Server, token: str | None, method: str, url: str, body: Any, stream: bool
) -> int:
    """One request with only a bearer token (no cookie, no Origin: not a browser)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client,
        client.stream(method, url, json=body) as response,
    ):
        if not stream:
            await response.aread()
        return response.status_code


async def test_every_route_with_every_kind_of_token(server: Server, db_url: str) -> None:
    """Each /api route answers each kind of the owner's token as its reach says: read tokens
    only read, workspace-limited ones stay in their workspace, session-only routes refuse
    every token, expired and revoked tokens get 401, public routes ignore tokens."""
    clients, users = await make_users(server)
    clients["victim"] = server.client()
    users["victim"] = await register(clients["victim"], "victim")
    elsewhere = await clients[OWNER].post("/api/workspaces", json={"name": "elsewhere"})
    assert elsewhere.status_code == 201, elsewhere.text
    tokens = Tokens(clients[OWNER], db_url)
    await tokens.prepare(elsewhere.json()["id"])
    rows: dict[tuple[str, str], tuple[str, Case | TokenRow]] = {
        key: (SESSION if key in SESSION_SCOPED else WORKSPACE, case_of(entry))
        for key, entry in MATRIX.items()
    }
    rows.update({key: (row.reach, row) for key, row in TOKEN_ROUTES.items()})
    wrong: list[str] = []
    shared = await make_world(server, clients, users)
    shared_setups: dict[Setup, dict[str, str]] = {}
    try:
        for (method, rule), (reach, row) in sorted(rows.items()):
            ok = row.ok
            stream = isinstance(row, Case) and row.stream
            for kind in TOKEN_KINDS:
                want = token_expected(kind, reach, method)
                # A call that may succeed gets a fresh world (routes delete things); one that
                # must be refused changes nothing, so they share one.
                fresh = reach == WORKSPACE and want == "allowed"
                world = await make_world(server, clients, users) if fresh else shared
                values = {**world.path_values(), **DUMMY_VALUES}
                if row.setup is not None and fresh:
                    values.update(await row.setup(world))
                elif row.setup is not None:
                    if row.setup not in shared_setups:
                        shared_setups[row.setup] = await row.setup(world)
                    values.update(shared_setups[row.setup])
                url = fill(rule, values)
                token = await tokens.of(kind, world)
                status = await token_call(server, token, method, url, row.body, stream)
                if want == "as anonymous":
                    anonymous = await token_call(server, None, method, url, row.body, stream)
                    got = "as anonymous" if status == anonymous else f"{status} ({anonymous})"
                else:
                    got = "allowed" if 200 <= status < 400 or status in ok else str(status)
                if fresh:
                    await clients[OWNER].delete(f"/api/workspaces/{world.workspace_id}")
                if want != got:
                    wrong.append(f"{method} {rule} with a {kind} token: expected {want}, got {got}")
    finally:
        with trio.CancelScope(shield=True):
            for client in clients.values():
                await client.aclose()
    assert not wrong, "\n".join(wrong)
