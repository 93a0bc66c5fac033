"""A new sandbox's environment variables (sealed at rest, names only in the API, in the agent's
process on every start) and its git repository (sandboxes/setup.py)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from agentserver.errors import AgentServerError
from agentserver.sandboxes import process as process_backend
from agentserver.sandboxes.env_key import KEY_FILE, KEY_NAME
from agentserver.sandboxes.isolation import Isolation
from agentserver.settings import Settings
from tests.conftest import Server, start_server
from tests.support.sandboxes import (
    EventStream,
    agent_process,
    open_events,
    owner_with_workspace,
    sandbox_settings_for,
)

SECRET = "s3cr3t-value-that-must-never-show-9f2c"
ENV = {"MY_TOKEN": SECRET, "plain_name": "hello world", "EMPTY": ""}

NO_AGENT = "/nonexistent/opencode"  # these tests never start one


def environ_of(pid: int) -> dict[str, str]:
    """The environment of the agent process itself (below bubblewrap when it wraps it)."""
    raw = Path(f"/proc/{agent_process(pid)}/environ").read_bytes().split(b"\0")
    pairs = (entry.decode().split("=", 1) for entry in raw if b"=" in entry)
    return {name: value for name, value in pairs}


def pid_of(server: Server, sandbox_id: str) -> int:
    pid = server.deps.sandboxes.backend.pid(sandbox_id)  # type: ignore[attr-defined]
    assert pid is not None
    return int(pid)


async def create_running(
    client: httpx.AsyncClient, events: EventStream, wid: str, **extra: object
) -> str:
    body = {"name": "box", **extra}
    response = await client.post(f"/api/workspaces/{wid}/sandboxes", json=body)
    assert response.status_code == 201, response.text
    sid = str(response.json()["id"])
    running = await events.until(sid, "running", "failed")
    assert running["status"] == "running", running
    return sid


async def test_bad_variables_and_urls_are_refused_naming_them(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Each refused variable or URL is a 400 on its field whose message names the variable;
    nothing is created."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", "/nonexistent/opencode")
    server = await start_server(nursery, settings)
    owner, wid = await owner_with_workspace(server)
    url = f"/api/workspaces/{wid}/sandboxes"
    for extra, field, named in (
        ({"env": {"1BAD": "x"}}, "env", "1BAD"),
        ({"env": {"A-B": "x"}}, "env", "A-B"),
        ({"env": {"OPENCODE_SERVER_PASSWORD": "x"}}, "env", "OPENCODE_SERVER_PASSWORD"),
        ({"env": {"ANTHROPIC_API_KEY": "x"}}, "env", "ANTHROPIC_API_KEY"),
        ({"env": {"HOME": "/"}}, "env", "HOME"),
        ({"env": {"path": "/"}}, "env", "path"),
        ({"env": {"AGENTSERVER_DISK": "/"}}, "env", "AGENTSERVER_DISK"),
        ({"env": {"BIG": "x" * 4097}}, "env", "BIG"),
        ({"env": {f"V{i}": "x" for i in range(51)}}, "env", "at most 50"),
        ({"env": {f"V{i}": "x" * 4000 for i in range(9)}}, "env", "in all"),
        ({"gitUrl": "not a url"}, "gitUrl", "gitUrl"),
        ({"gitUrl": "file:///tmp/repo.git"}, "gitUrl", "gitUrl"),
        ({"gitUrl": "http://example.com/a.git"}, "gitUrl", "gitUrl"),
        ({"gitUrl": "https://example.com/a.git", "gitRef": "--upload-pack=x"}, "gitRef", "gitRef"),
        ({"gitRef": "main"}, "gitRef", "gitRef"),
    ):
        response = await owner.post(url, json={"name": "a", **extra})
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["field"] == field, extra
        assert named in error["message"], (named, error)
    assert (await owner.get(url)).json() == []
    await owner.aclose()
    server.shutdown.set()


async def test_values_are_sealed_and_only_names_are_shown(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """The API answers the names and the repository, never a value; the database row holds no
    value in clear; the key is kept in the database for every replica, not in the data
    directory (where it used to be a 0600 file)."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", "/nonexistent/opencode")
    server = await start_server(nursery, settings)
    owner, wid = await owner_with_workspace(server)
    body = {"name": "a", "env": ENV, "gitUrl": "git@github.com:me/proj.git", "gitRef": "dev"}
    created = await owner.post(f"/api/workspaces/{wid}/sandboxes", json=body)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    setup = await owner.get(f"/api/sandboxes/{sid}/setup")
    assert setup.status_code == 200
    assert setup.json() == {
        "envNames": sorted(ENV),
        "gitUrl": "git@github.com:me/proj.git",
        "gitRef": "dev",
    }
    for answer in (created, setup, await owner.get(f"/api/sandboxes/{sid}")):
        assert SECRET not in answer.text
    [row] = await server.deps.db.rows("sbx_setup_get", sandbox_id=sid)
    assert sorted(row["env_names"]) == sorted(ENV)
    sealed = bytes(row["env_sealed"])
    assert SECRET.encode() not in sealed
    assert b"hello world" not in sealed
    assert not (server.deps.settings.data_dir / KEY_FILE).exists()
    assert len(await recorded_key(server)) == 32
    assert (await server.deps.sandboxes.setup_of(sid)).env == ENV
    await owner.aclose()
    server.shutdown.set()


async def recorded_key(server: Server) -> bytes:
    """The key every replica shares, as the database holds it (b"" when there is none)."""
    row = await server.deps.db.transaction(
        lambda tx: tx.conn.execute(
            "SELECT value FROM cluster_secrets WHERE name = %s", (KEY_NAME,)
        ).fetchone()
    )
    return b"" if row is None else bytes(row[0])


async def create_with_env(server: Server, owner_name: str) -> str:
    """A sandbox (never started: no agent) created on `server` with ENV by a new owner; its id."""
    owner, wid = await owner_with_workspace(server, owner_name)
    created = await owner.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "a", "env": ENV})
    assert created.status_code == 201, created.text
    await owner.aclose()
    return str(created.json()["id"])


def old_install(db_url: str, data_dir: Path, key: bytes) -> Settings:
    """A server's settings whose data directory holds `key` as the key file servers made before
    the key was kept in the database."""
    settings = sandbox_settings_for(db_url, data_dir, NO_AGENT)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / KEY_FILE).write_bytes(base64.urlsafe_b64encode(key) + b"\n")
    return settings


async def test_an_old_key_file_is_adopted_and_replicas_read_each_others_values(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Upgrading a server whose key was a file in its data directory: the file's key becomes
    the database's, values sealed with it before the upgrade still read, and a replica with a
    data directory of its own reads them and seals values the first one reads."""
    key = bytes(range(100, 132))
    # Before the upgrade: values sealed with the file's key (the same Fernet key, given here).
    before = await start_server(
        nursery,
        sandbox_settings_for(
            db_url,
            tmp_path / "before",
            NO_AGENT,
            sandbox_env_key=base64.urlsafe_b64encode(key).decode(),
        ),
    )
    sealed_before = await create_with_env(before, "owner1")
    before.shutdown.set()
    upgraded = await start_server(nursery, old_install(db_url, tmp_path / "one", key))
    assert await recorded_key(upgraded) == key
    assert (await upgraded.deps.sandboxes.setup_of(sealed_before)).env == ENV
    replica = await start_server(nursery, sandbox_settings_for(db_url, tmp_path / "two", NO_AGENT))
    assert not (replica.deps.settings.data_dir / KEY_FILE).exists()
    assert (await replica.deps.sandboxes.setup_of(sealed_before)).env == ENV
    sealed_on_replica = await create_with_env(replica, "owner2")
    assert (await upgraded.deps.sandboxes.setup_of(sealed_on_replica)).env == ENV
    for server in (upgraded, replica):
        server.shutdown.set()


async def test_a_key_file_that_lost_the_race_is_sealed_over(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """If another replica recorded a key first, a server with an old key file seals what only
    that file's key opens again with the recorded key: every replica reads it afterwards."""
    key = bytes(range(200, 232))
    before = await start_server(
        nursery,
        sandbox_settings_for(
            db_url,
            tmp_path / "before",
            NO_AGENT,
            sandbox_env_key=base64.urlsafe_b64encode(key).decode(),
        ),
    )
    sid = await create_with_env(before, "owner3")
    before.shutdown.set()
    first = await start_server(nursery, sandbox_settings_for(db_url, tmp_path / "new", NO_AGENT))
    recorded = await recorded_key(first)
    assert recorded not in (b"", key)
    with pytest.raises(AgentServerError, match="not the key they were sealed with"):
        await first.deps.sandboxes.setup_of(sid)
    late = await start_server(nursery, old_install(db_url, tmp_path / "old", key))
    assert await recorded_key(late) == recorded
    assert (await first.deps.sandboxes.setup_of(sid)).env == ENV
    assert (await late.deps.sandboxes.setup_of(sid)).env == ENV
    for server in (first, late):
        server.shutdown.set()


async def test_a_configured_key_is_shared_by_servers_and_a_wrong_one_is_named(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With AGENTSERVER_SANDBOX_ENV_KEY no key file is made; another server (another data
    directory, as a second replica or a restarted pod) with the same key reads the variables;
    one with another key says which key is wrong instead of failing obscurely."""

    def settings(folder: str, key: str) -> Settings:
        return sandbox_settings_for(db_url, tmp_path / folder, NO_AGENT, sandbox_env_key=key)

    key = base64.urlsafe_b64encode(bytes(range(32))).decode()
    first = await start_server(nursery, settings("one", key))
    owner, wid = await owner_with_workspace(first)
    created = await owner.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "a", "env": ENV})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert not (first.deps.settings.data_dir / KEY_FILE).exists()
    assert await recorded_key(first) == b""  # nothing recorded when the key is given
    await owner.aclose()
    first.shutdown.set()
    second = await start_server(
        nursery,
        sandbox_settings_for(
            db_url, tmp_path / "two", "/nonexistent/opencode", sandbox_env_key=key
        ),
    )
    assert (await second.deps.sandboxes.setup_of(sid)).env == ENV
    second.shutdown.set()
    other = base64.urlsafe_b64encode(bytes(32)).decode()
    third = await start_server(
        nursery,
        sandbox_settings_for(
            db_url, tmp_path / "three", "/nonexistent/opencode", sandbox_env_key=other
        ),
    )
    with pytest.raises(AgentServerError, match="AGENTSERVER_SANDBOX_ENV_KEY"):
        await third.deps.sandboxes.setup_of(sid)
    third.shutdown.set()


async def test_the_agent_sees_its_variables_after_a_resume_too(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """With bubblewrap, the agent's own process has the variables, on create and on resume;
    the server's own variables win over nothing (they cannot be given)."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    sid = await create_running(client, events, wid, env=ENV)
    seen = environ_of(pid_of(sandbox_server, sid))
    assert {k: seen.get(k) for k in ENV} == ENV
    assert (await client.post(f"/api/sandboxes/{sid}/pause")).status_code == 200
    assert (await events.until(sid, "paused", "failed"))["status"] == "paused"
    assert (await client.post(f"/api/sandboxes/{sid}/resume")).status_code == 200
    again = await events.until(sid, "running", "failed", after=len(events.seen) - 1)
    assert again["status"] == "running", again
    seen = environ_of(pid_of(sandbox_server, sid))
    assert {k: seen.get(k) for k in ENV} == ENV
    events.close()
    await client.aclose()


async def test_without_bubblewrap_the_agent_sees_its_variables(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    opencode_bin: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unisolated process sandbox's agent has the variables too."""

    async def no_isolation(*args: object) -> Isolation:
        return Isolation()

    monkeypatch.setattr(process_backend, "probe_isolation", no_isolation)
    settings = sandbox_settings_for(
        db_url, tmp_path / "d", opencode_bin, allow_unisolated_sandboxes="true"
    )
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = await create_running(client, events, wid, env=ENV)
    seen = environ_of(pid_of(server, sid))
    assert {k: seen.get(k) for k in ENV} == ENV
    events.close()
    await client.aclose()
    server.shutdown.set()


def bare_repository(work: Path, bare: Path) -> None:
    """A bare repository at `bare` with one commit holding README (on branch main)."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    work.mkdir(parents=True)
    (work / "README").write_text("cloned\n")
    for args in (["init", "-q", "-b", "main"], ["add", "README"], ["commit", "-q", "-m", "one"]):
        subprocess.run([*git, *args], cwd=work, check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    for path in (bare, *bare.rglob("*")):
        path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))


async def logs_until(client: httpx.AsyncClient, sid: str, needle: str) -> str:
    """The sandbox's logs once they hold `needle` (polled: no event marks a log line)."""
    text = ""
    with trio.move_on_after(60):
        while needle not in text:
            await trio.sleep(0.2)
            text = str((await client.get(f"/api/sandboxes/{sid}/logs")).json())
    assert needle in text, text
    return text


async def test_the_repository_is_cloned_onto_the_disk_once(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """With file:// allowed (AGENTSERVER_GIT_FILE_URLS), the repository is cloned inside the
    sandbox into /data/disk0/<repo> at the ref given; a second sandbox finds the folder there
    and skips; a repository that cannot be cloned leaves the sandbox running with a
    "git clone failed" line in its logs."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", opencode_bin, git_file_urls="true")
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    disk = server.deps.settings.data_dir / "workspaces" / wid / "disk"
    # On the disk itself, so the sandbox (bubblewrap binds only the disk) can read it.
    bare_repository(tmp_path / "work", disk / "src" / "project.git")
    url = "file:///data/disk0/src/project.git"
    # The test's repository belongs to root, not the sandbox's user: git refuses to read it
    # unless its global config says so (named by the sandbox's own variables, which its clone
    # sees too; git 2.39 reads safe.directory from no other place a test can reach).
    (disk / "src" / "gitconfig").write_text("[safe]\n\tdirectory = *\n")
    (disk / "src" / "gitconfig").chmod(0o644)
    trust = {"GIT_CONFIG_GLOBAL": "/data/disk0/src/gitconfig"}
    sid = await create_running(client, events, wid, gitUrl=url, gitRef="main", env=trust)
    await logs_until(client, sid, "git clone: ")
    assert (disk / "project" / "README").read_text() == "cloned\n"

    other = await create_running(client, events, wid, name="two", gitUrl=url)
    assert "already exists" in await logs_until(client, other, "git clone skipped")

    broken = await create_running(
        client, events, wid, name="three", gitUrl="file:///data/disk0/src/missing.git"
    )
    await logs_until(client, broken, "git clone failed: ")
    assert (await client.get(f"/api/sandboxes/{broken}")).json()["status"] == "running"
    events.close()
    await client.aclose()
    server.shutdown.set()
