"""The server offers the local agent as one file it builds from itself (or an operator's)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import trio

from agentserver import __version__
from tests.conftest import Server, make_settings, start_server

ROUTE = "/download/agentserver-agent.pyz"


def bare_python() -> str:
    """The interpreter under the project's virtualenv: no agentserver, no dependencies."""
    return getattr(sys, "_base_executable", sys.executable)


async def test_the_agent_file_is_built_once_per_version_and_runs_alone(
    server: Server, tmp_path: Path
) -> None:
    """The dialog is told the download; the file is a zipapp with the agent and no server
    module, `agent connect --help` runs from it with nothing else on the path, and a second
    download is the same file, revalidated by its ETag."""
    async with server.client() as client:
        install = await client.get("/api/agent/install")
        assert install.json() == {"version": __version__, "tunnelProtocol": 1, "download": ROUTE}
        first = await client.get(ROUTE)
        assert first.status_code == 200, first.text
        assert "agentserver-agent.pyz" in first.headers["content-disposition"]
        assert first.headers["x-agentserver-version"] == __version__
        again = await client.get(ROUTE, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        second = await client.get(ROUTE)
        assert second.content == first.content
    cached = list((server.deps.settings.data_dir / "downloads").iterdir())
    assert [p.name for p in cached] == [f"agentserver-agent-{__version__}.pyz"]
    agent = tmp_path / "agentserver-agent.pyz"
    agent.write_bytes(first.content)
    names = zipfile.ZipFile(agent).namelist()
    assert "agentserver/agent/connect.py" in names
    assert not [n for n in names if n.startswith(("agentserver/api/", "agentserver/db/"))]
    assert not [n for n in names if n.startswith(("quart/", "psycopg/", "hypercorn/"))]
    run = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [bare_python(), "-I", "-S", str(agent), "agent", "connect", "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
            timeout=60,
            check=False,
        )
    )
    assert run.returncode == 0, run.stderr
    assert "--code" in run.stdout
    assert "--server" in run.stdout


async def test_a_configured_file_is_sent_instead(
    db_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """--agent-zipapp names a file: the route sends it as is."""
    zipapp = tmp_path / "agentserver.pyz"
    zipapp.write_bytes(b"PK\x03\x04 a zipapp")
    settings = make_settings(db_url, tmp_path / "data", agent_zipapp=str(zipapp))
    server = await start_server(nursery, settings)
    async with server.client() as client:
        install = await client.get("/api/agent/install")
        assert install.json()["download"] == ROUTE
        download = await client.get(ROUTE)
        assert download.status_code == 200
        assert download.content == zipapp.read_bytes()
    server.shutdown.set()


async def test_a_missing_configured_file_is_a_clear_404(
    db_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A configured file that is not there: no download offered, and the route says why."""
    settings = make_settings(db_url, tmp_path / "data", agent_zipapp=str(tmp_path / "gone.pyz"))
    server = await start_server(nursery, settings)
    async with server.client() as client:
        install = await client.get("/api/agent/install")
        assert install.json() == {"version": __version__, "tunnelProtocol": 1, "download": None}
        missing = await client.get(ROUTE)
        assert missing.status_code == 404
        assert "--agent-zipapp" in missing.json()["error"]["message"]
    server.shutdown.set()
