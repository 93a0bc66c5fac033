"""The server offers the local agent for download only when a zipapp was built and configured."""

from __future__ import annotations

from pathlib import Path

import trio

from agentserver import __version__
from tests.conftest import Server, make_settings, start_server


async def test_without_a_zipapp_there_is_nothing_to_download(server: Server) -> None:
    """No --agent-zipapp: the dialog is told the version to pip-install, the route is 404."""
    async with server.client() as client:
        install = await client.get("/api/agent/install")
        assert install.json() == {"version": __version__, "download": None}
        missing = await client.get("/downloads/agentserver.pyz")
        assert missing.status_code == 404
        assert "pip or uvx" in missing.json()["error"]["message"]


async def test_a_configured_zipapp_is_served_as_a_download(
    db_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """--agent-zipapp names a file: the dialog gets its URL and the route sends it as is."""
    zipapp = tmp_path / "agentserver.pyz"
    zipapp.write_bytes(b"PK\x03\x04 a zipapp")
    settings = make_settings(db_url, tmp_path / "data", agent_zipapp=str(zipapp))
    server = await start_server(nursery, settings)
    async with server.client() as client:
        install = await client.get("/api/agent/install")
        assert install.json()["download"] == "/downloads/agentserver.pyz"
        download = await client.get("/downloads/agentserver.pyz")
        assert download.status_code == 200
        assert download.content == zipapp.read_bytes()
        assert "agentserver.pyz" in download.headers["content-disposition"]
    server.shutdown.set()
