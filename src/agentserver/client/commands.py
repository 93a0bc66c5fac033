"""The client's commands: `login`, `workspaces list`, `sandboxes list|create|pause|resume|delete|
logs|open`, `tokens list|create|revoke`. Exit status 0 when done, 1 when refused or failed, 2
for bad usage (cyclopts' own for unknown options)."""

from __future__ import annotations

import functools
import os
import socket
import sys
import webbrowser
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import cyclopts
import trio
from cyclopts import Parameter

from agentserver.client import config
from agentserver.client.output import show
from agentserver.client.remote import Refused, Remote

P = ParamSpec("P")
R = TypeVar("R")

workspaces_app = cyclopts.App(name="workspaces", help="Your workspaces.", backend="trio")
sandboxes_app = cyclopts.App(name="sandboxes", help="Sandboxes in a workspace.", backend="trio")
tokens_app = cyclopts.App(name="tokens", help="Your personal API tokens.", backend="trio")

JsonFlag = Annotated[bool, Parameter(name="--json", help="Print JSON instead of a table.")]
WorkspaceOption = Annotated[
    str | None,
    Parameter(
        name=["--workspace", "-w"],
        help="Workspace id or name (default: your only workspace).",
    ),
]
SETTLED = frozenset({"running", "failed", "paused", "offline"})


class Usage(Exception):
    """Bad usage the parser cannot see (exit 2)."""


def say(line: str) -> None:
    print(line, file=sys.stderr)


def handled(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """One line on stderr instead of a traceback: exit 1 when refused, 2 for bad usage."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except Refused as exc:
            say(f"agentserver: {exc.message}")
            raise SystemExit(1) from None
        except Usage as exc:
            say(f"agentserver: {exc}")
            raise SystemExit(2) from None

    return run


def remote() -> Remote:
    login = config.load()
    if login is None:
        raise Refused("not signed in: run `agentserver login --server URL` first")
    return Remote(login.server, login.token)


def graphical() -> bool:
    """Whether a browser can open a window here: without a display Python's webbrowser would
    run a text browser in this terminal (and hang a script), so only the link is printed."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def launch(url: str) -> None:
    if graphical():
        webbrowser.open(url)


def maybe_open(url: str, browser: bool) -> None:
    """Print `url` (on stderr, so stdout stays for data) and, when asked, open a browser."""
    say(url)
    if browser:
        launch(url)


async def approved_token(server: str, body: dict[str, Any], browser: bool) -> dict[str, Any]:
    """A new token made through the browser: the person approves the request at the printed
    link (signed in there); this polls until they answer or the request expires."""
    async with Remote(server) as anonymous:
        started = await anonymous.post("/api/cli-login", body)
        say("Approve this request in your browser (signed in to the server):")
        maybe_open(started["approveUrl"], browser)
        with trio.move_on_after(started["expiresIn"]):
            while True:
                # A poll at the server's interval: the approval happens elsewhere, in a browser.
                await trio.sleep(started["interval"])
                answer = await anonymous.call(
                    "POST", "/api/cli-login/poll", {"request": started["request"]}, accept=(202,)
                )
                if not isinstance(answer, tuple):
                    return dict(answer)
    raise Refused("the request was not approved in time; run the command again")


def login_name() -> str:
    return f"agentserver CLI on {socket.gethostname()}"[:100]


@handled
async def login(
    *,
    server: Annotated[str, Parameter(name="--server", help="The server's URL.")],
    token: Annotated[
        str | None,
        Parameter(
            name="--token",
            help="An API token (from the Tokens page); without it the browser approves a new one.",
        ),
    ] = None,
    browser: Annotated[
        bool, Parameter(name="--browser", negative="--no-browser", help="Open the approval page.")
    ] = True,
) -> None:
    """Sign in to a server and save it with the token (0600) in your config directory."""
    url = config.normal_server(server)
    token_id = None
    if token is None:
        made = await approved_token(url, {"name": login_name()}, browser)
        token, token_id = made["token"], made["id"]
    async with Remote(url, token) as signed_in:
        me = await signed_in.get("/api/auth/me")
    path = config.save(config.Login(url, token, token_id))
    print(f"Signed in to {url} as {me['username']}; saved in {path}")


@workspaces_app.command(name="list")
@handled
async def list_workspaces(*, json: JsonFlag = False) -> None:
    """The workspaces you are a member of."""
    async with remote() as api:
        rows = await api.get("/api/workspaces")
    show(rows, [("id", "id"), ("name", "name"), ("role", "role")], json)


async def workspace_id(api: Remote, given: str | None) -> str:
    """The workspace named or numbered `given`, or the only one."""
    rows = await api.get("/api/workspaces")
    if given is not None:
        found = [w for w in rows if given in (w["id"], w["name"])]
        if not found:
            raise Refused(f"no workspace {given!r} (see `agentserver workspaces list`)")
        return str(found[0]["id"])
    if len(rows) == 1:
        return str(rows[0]["id"])
    names = ", ".join(w["name"] for w in rows) or "none"
    raise Usage(f"say which workspace with --workspace (yours: {names})")


SANDBOX_COLUMNS = [("id", "id"), ("name", "name"), ("type", "type"), ("status", "status")]


@sandboxes_app.command(name="list")
@handled
async def list_sandboxes(*, workspace: WorkspaceOption = None, json: JsonFlag = False) -> None:
    """The sandboxes of a workspace."""
    async with remote() as api:
        wid = await workspace_id(api, workspace)
        rows = await api.get(f"/api/workspaces/{wid}/sandboxes")
    show(rows, SANDBOX_COLUMNS, json)


async def settled(api: Remote, sandbox: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The sandbox once it is running (or failed, paused, offline), from the event stream."""
    with trio.move_on_after(seconds):
        async with api.events(f"/api/workspaces/{sandbox['workspaceId']}/events") as events:
            async for kind, data in events:
                mine = kind == "sandbox" and data.get("id") == sandbox["id"]
                if mine and data["status"] in SETTLED:
                    return dict(data)
    raise Refused(f"sandbox {sandbox['id']} did not start within {seconds:g} s")


@sandboxes_app.command
@handled
async def create(
    name: str,
    *,
    workspace: WorkspaceOption = None,
    type: Annotated[str, Parameter(help="opencode or openclaw.")] = "opencode",
    private: bool = False,
    wait: Annotated[bool, Parameter(help="Wait until it runs (or fails).")] = False,
    wait_seconds: Annotated[
        float, Parameter(name="--timeout", help="Seconds --wait waits.")
    ] = 300.0,
    json: JsonFlag = False,
) -> None:
    """Create a sandbox."""
    async with remote() as api:
        wid = await workspace_id(api, workspace)
        body = {"name": name, "type": type, "private": private}
        made = await api.post(f"/api/workspaces/{wid}/sandboxes", body)
        if wait:
            made = await settled(api, made, wait_seconds)
            if made["status"] == "failed":
                show(made, SANDBOX_COLUMNS, json)
                raise Refused(f"sandbox {made['id']} failed: {made.get('statusReason')}")
    show(made, SANDBOX_COLUMNS, json)


async def act(verb: str, sandbox_id: str, json: bool) -> None:
    async with remote() as api:
        changed = await api.post(f"/api/sandboxes/{sandbox_id}/{verb}")
    show(changed, SANDBOX_COLUMNS, json)


@sandboxes_app.command
@handled
async def pause(sandbox_id: str, *, json: JsonFlag = False) -> None:
    """Pause a running sandbox (its files stay)."""
    await act("pause", sandbox_id, json)


@sandboxes_app.command
@handled
async def resume(sandbox_id: str, *, json: JsonFlag = False) -> None:
    """Start a paused sandbox again."""
    await act("resume", sandbox_id, json)


@sandboxes_app.command
@handled
async def delete(sandbox_id: str) -> None:
    """Delete a sandbox with its files."""
    async with remote() as api:
        await api.delete(f"/api/sandboxes/{sandbox_id}")
    say(f"deleted {sandbox_id}")


@sandboxes_app.command
@handled
async def logs(sandbox_id: str, *, lines: int = 200) -> None:
    """The tail of a sandbox's agent output."""
    async with remote() as api:
        answer = await api.get(f"/api/sandboxes/{sandbox_id}/logs?lines={lines}")
    text = answer["logs"] if isinstance(answer["logs"], str) else "\n".join(answer["logs"])
    print(text)


@sandboxes_app.command(name="open")
@handled
async def open_sandbox(
    sandbox_id: str,
    *,
    browser: Annotated[
        bool, Parameter(name="--browser", negative="--print", help="Open it, or only print it.")
    ] = True,
) -> None:
    """A link that opens the sandbox once, in a browser signed in as you (printed on stdout)."""
    async with remote() as api:
        link = await api.post(f"/api/sandboxes/{sandbox_id}/launch")
    print(link["url"])
    if browser:
        launch(link["url"])


TOKEN_COLUMNS = [
    ("id", "id"),
    ("name", "name"),
    ("scope", "scope"),
    ("workspace", "workspaceId"),
    ("state", "state"),
    ("created", "createdAt"),
    ("last used", "lastUsedAt"),
    ("expires", "expiresAt"),
]


@tokens_app.command(name="list")
@handled
async def list_tokens(
    *,
    all_users: Annotated[bool, Parameter(name="--all", help="Every user's (admins).")] = False,
    json: JsonFlag = False,
) -> None:
    """Your tokens (never the tokens themselves)."""
    async with remote() as api:
        rows = await api.get("/api/admin/tokens" if all_users else "/api/tokens")
    columns = [("user", "username"), *TOKEN_COLUMNS] if all_users else TOKEN_COLUMNS
    show(rows, columns, json)


@tokens_app.command(name="create")
@handled
async def create_token(
    name: str,
    *,
    scope: Literal["read", "full"] = "full",
    workspace: WorkspaceOption = None,
    days: Annotated[int | None, Parameter(help="Days until it expires (default 30).")] = None,
    browser: Annotated[
        bool, Parameter(name="--browser", negative="--no-browser", help="Open the approval page.")
    ] = True,
    json: JsonFlag = False,
) -> None:
    """A new token, approved in your browser (a token cannot make tokens); printed once."""
    login = config.load()
    if login is None:
        raise Refused("not signed in: run `agentserver login --server URL` first")
    body: dict[str, Any] = {"name": name, "scope": scope, "expiresInDays": days}
    if workspace is not None:
        async with remote() as api:
            body["workspaceId"] = await workspace_id(api, workspace)
    made = await approved_token(login.server, body, browser)
    if json:
        show(made, TOKEN_COLUMNS, True)
    else:
        print(made["token"])
        say(f"token {made['id']} ({made['scope']}), expires {made['expiresAt']}; shown only now")


@tokens_app.command(name="revoke")
@handled
async def revoke_token(token_id: str) -> None:
    """Revoke a token (with a token: only that one itself; others on the Tokens page)."""
    async with remote() as api:
        await api.delete(f"/api/tokens/{token_id}")
    say(f"revoked {token_id}")


def install(app: cyclopts.App) -> None:
    """Add the client's commands to the `agentserver` command."""
    app.command(login, name="login")
    for sub in (workspaces_app, sandboxes_app, tokens_app):
        app.command(sub)
