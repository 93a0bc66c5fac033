"""The command-line client (`agentserver login`, `workspaces`, `sandboxes`, `tokens`) run as a
real process against a real server: with real opencode for the sandbox's whole life, and
without sandboxes for sign-in, bad tokens, an unreachable server and bad usage."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
import trio

from tests.conftest import Server, register
from tests.support.accounts import owner_of_workspace
from tests.support.sandbox_login import BIND_COOKIE, SANDBOX_COOKIE
from tests.support.workspace_events import START_DEADLINE

BIN = Path(sys.executable).parent / "agentserver"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} is not installed (uv sync)")


def client_env(config_home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with its own config directory and no client variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSERVER_")}
    env.update(XDG_CONFIG_HOME=str(config_home), COLUMNS="250", **extra)
    return env


async def run(config_home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`agentserver ARGS…` to completion (the server keeps serving meanwhile)."""
    with trio.fail_after(START_DEADLINE + 60):
        return await trio.run_process(
            [str(BIN), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=client_env(config_home, **env),
        )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, (result.returncode, result.stderr.decode())
    return result.stdout.decode()


def refused(result: subprocess.CompletedProcess[bytes], status: int = 1) -> str:
    """The one line on stderr of a refused command (no traceback), with its exit status."""
    err = result.stderr.decode()
    assert result.returncode == status, (result.returncode, err)
    assert "Traceback" not in err
    return err


async def make_token(browser: httpx.AsyncClient, **body: Any) -> str:
    made = await browser.post("/api/tokens", json={"name": "cli", **body})
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


async def opens_once(server: Server, browser: httpx.AsyncClient, url: str) -> None:
    """The launch link leads the signed-in browser into the sandbox (bound ticket, cookie,
    the agent's page); the same link a second time is refused."""
    link = urlsplit(url)
    first = await browser.get(f"{link.path}?{link.query}")
    assert first.status_code == 302, first.text
    start = urlsplit(first.headers["location"])
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Host": start.netloc}, timeout=30
    ) as sub:
        bound = await sub.get(start.path)
        assert bound.status_code == 302, bound.text
        nonce = bound.cookies[BIND_COOKIE]
        back = urlsplit(bound.headers["location"])
        ticketed = await browser.get(f"{back.path}?{back.query}")
        assert ticketed.status_code == 302, ticketed.text
        ticket = urlsplit(ticketed.headers["location"])
        redeemed = await sub.get(
            f"{ticket.path}?{ticket.query}", headers={"Cookie": f"{BIND_COOKIE}={nonce}"}
        )
        assert redeemed.status_code == 302, redeemed.text
        cookie = redeemed.cookies[SANDBOX_COOKIE]
        page = await sub.get("/", headers={"Cookie": f"{SANDBOX_COOKIE}={cookie}"})
        assert page.status_code == 200
    again = await browser.get(f"{link.path}?{link.query}")
    assert again.status_code == 400


async def test_a_sandbox_from_login_to_delete(sandbox_server: Server, tmp_path: Path) -> None:
    """login with a token, create a sandbox and wait until it runs, list it (JSON parses),
    open prints a link that works once, pause, delete; the config file is 0600."""
    home = tmp_path / "config"
    async with sandbox_server.client() as browser:
        _, workspace = await owner_of_workspace(browser, "cli-owner", "cli-ws")
        token = await make_token(browser)
        assert "Signed in" in ok(
            await run(home, "login", "--server", sandbox_server.url, "--token", token)
        )
        saved = home / "agentserver" / "client.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        listed = json.loads(ok(await run(home, "workspaces", "list", "--json")))
        assert [w["id"] for w in listed] == [workspace["id"]]
        assert "cli-ws" in ok(await run(home, "workspaces", "list"))

        made = json.loads(ok(await run(home, "sandboxes", "create", "box", "--wait", "--json")))
        assert made["status"] == "running", made
        sid = made["id"]
        rows = json.loads(ok(await run(home, "sandboxes", "list", "--json")))
        assert [(r["id"], r["status"]) for r in rows] == [(sid, "running")]
        table = ok(await run(home, "sandboxes", "list"))
        assert table.splitlines()[0].split() == ["ID", "NAME", "TYPE", "STATUS"]
        assert sid in table

        url = ok(await run(home, "sandboxes", "open", sid, "--print")).strip()
        await opens_once(sandbox_server, browser, url)

        paused = json.loads(ok(await run(home, "sandboxes", "pause", sid, "--json")))
        assert paused["status"] in ("pausing", "paused")
        ok(await run(home, "sandboxes", "delete", sid))
        assert json.loads(ok(await run(home, "sandboxes", "list", "--json"))) == []
        tokens = json.loads(ok(await run(home, "tokens", "list", "--json")))
        assert [t["name"] for t in tokens] == ["cli"]


async def test_bad_token_unreachable_server_and_bad_usage(
    server: Server, db_url: str, tmp_path: Path
) -> None:
    """A token the server does not know, or an expired one: exit 1 with the server's reason;
    a server that does not answer: exit 1 naming it; no login at all: exit 1; a missing
    argument: exit 2."""
    home = tmp_path / "config"
    async with server.client() as browser:
        await register(browser, "expiring")
        expiring = await make_token(browser)

    def expire() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second'")

    await trio.to_thread.run_sync(expire)
    expired = refused(
        await run(
            home, "sandboxes", "list", AGENTSERVER_SERVER=server.url, AGENTSERVER_TOKEN=expiring
        )
    )
    assert "expired" in expired
    not_signed_in = refused(await run(home, "workspaces", "list"))
    assert "agentserver login" in not_signed_in
    bad = refused(
        await run(
            home,
            "workspaces",
            "list",
            AGENTSERVER_SERVER=server.url,
            AGENTSERVER_TOKEN="ast_not-a-real-token",
        )
    )
    assert "not valid" in bad
    assert "agentserver login" in bad
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    gone = refused(
        await run(home, "login", "--server", f"http://127.0.0.1:{port}", "--token", "ast_x")
    )
    assert "cannot reach the server" in gone
    assert not (home / "agentserver" / "client.json").exists()
    refused(await run(home, "sandboxes", "create"), status=2)


async def test_login_approved_in_the_browser(server: Server, tmp_path: Path) -> None:
    """`login` without a token prints the approval link; once the signed-in person approves
    it (here over HTTP, as the page does), the command saves a new token and exits 0; that
    token works and is named after this machine."""
    home = tmp_path / "config"
    async with server.client() as browser:
        await register(browser, "approver")
        process = await trio.lowlevel.open_process(
            [str(BIN), "login", "--server", server.url, "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=client_env(home),
        )
        assert process.stderr is not None
        assert process.stdout is not None
        with trio.fail_after(60):
            seen = b""
            while b"/cli-login?code=" not in seen or not seen.endswith(b"\n"):
                chunk = await process.stderr.receive_some()
                assert chunk, seen
                seen += chunk
            url = next(line for line in seen.decode().splitlines() if "/cli-login?code=" in line)
            code = parse_qs(urlsplit(url).query)["code"][0]
            approved = await browser.post("/api/cli-login/approve", json={"code": code})
            assert approved.status_code == 200, approved.text
            assert await process.wait() == 0
        out = (await process.stdout.receive_some()).decode()
        assert "approver" in out
        saved = json.loads((home / "agentserver" / "client.json").read_text())
        tokens = (await browser.get("/api/tokens")).json()
        assert [t["id"] for t in tokens] == [saved["tokenId"]]
        assert tokens[0]["name"].startswith("agentserver CLI on ")
    whoami = json.loads(ok(await run(home, "tokens", "list", "--json")))
    assert whoami[0]["lastUsedAt"] is not None
