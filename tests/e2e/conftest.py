"""Fixtures of the tunnel's end-to-end tests: a server with a workspace, and a bulk upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.conftest import Server
from tests.support.accounts import owner_of_workspace
from tests.support.bulk_upstream import BulkUpstream, serve_bulk
from tests.support.tunnel_world import TunnelWorld


@pytest.fixture
async def world(server: Server, tmp_path: Path) -> AsyncIterator[TunnelWorld]:
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        yield TunnelWorld(server, owner, workspace["id"], tmp_path)


@pytest.fixture
async def bulk(nursery: trio.Nursery) -> BulkUpstream:
    return await nursery.start(serve_bulk, BulkUpstream())  # type: ignore[no-any-return]
