"""Throttles hold across replicas: two servers on one database count one attacker's attempts
together, so a second replica does not double them (issue 16)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import Server, make_settings, register, start_server
from tests.support.accounts import owner_of_workspace

PASSWORD = "correct-horse"
ATTACKER = "203.0.113.5"


@pytest.fixture
async def replicas(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> AsyncIterator[list[Server]]:
    """Two replicas (own data directories, one database) behind a trusted loopback proxy."""
    servers = [
        await start_server(
            nursery, make_settings(db_url, tmp_path / f"replica{i}", trusted_proxies="127.0.0.1")
        )
        for i in range(2)
    ]
    yield servers
    for server in servers:
        server.shutdown.set()


async def login(server: Server, password: str, address: str) -> httpx.Response:
    async with server.client(headers={"X-Forwarded-For": address}) as client:
        return await client.post(
            "/api/auth/login", json={"username": "alice", "password": password}
        )


async def test_failed_sign_ins_spread_over_replicas_are_refused_after_one_limit(
    replicas: list[Server],
) -> None:
    """Five wrong passwords from one address, alternating replicas, and that address is refused
    on both, as after five on one server; another address still signs in."""
    async with replicas[0].client() as client:
        await register(client, "alice")
    for i in range(5):
        wrong = await login(replicas[i % 2], "wrong-wrong", ATTACKER)
        assert wrong.status_code == 401, (i, wrong.text)
    for server in replicas:
        refused = await login(server, PASSWORD, ATTACKER)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    owner = await login(replicas[1], PASSWORD, "198.51.100.20")
    assert owner.status_code == 200, owner.text


async def test_agent_code_guesses_spread_over_replicas_are_refused_after_one_limit(
    replicas: list[Server],
) -> None:
    """Ten wrong registration codes, alternating replicas, and the next attempt is refused on
    both, even with a right code."""
    async with replicas[0].client() as owner:
        _, workspace = await owner_of_workspace(owner)
        made = await owner.post(f"/api/workspaces/{workspace['id']}/agent-code")
        assert made.status_code == 201, made.text
        code = made.json()["code"]

    async def register_agent(server: Server, code: str) -> httpx.Response:
        async with server.client(headers={"X-Forwarded-For": ATTACKER}) as agent:
            return await agent.post("/api/agent/register", json={"code": code, "name": "laptop"})

    for i in range(10):
        wrong = await register_agent(replicas[i % 2], f"wrong-{i}")
        assert wrong.status_code == 401, (i, wrong.text)
    for server in replicas:
        limited = await register_agent(server, code)
        assert limited.status_code == 429, limited.text


async def test_a_paced_account_gets_one_attempt_per_delay_across_replicas(
    replicas: list[Server],
) -> None:
    """Once an account is paced, attempts from many addresses on both replicas start one delay
    apart in all: four take at least four delays, not two per replica side by side."""
    delay = 0.4
    for server in replicas:
        server.deps.account_pacer.delay = delay  # Deps is frozen: its pacer is tuned in place
    async with replicas[0].client() as client:
        await register(client, "alice")
    for i in range(5):
        wrong = await login(replicas[i % 2], "wrong-wrong", f"203.0.113.{i + 1}")
        assert wrong.status_code == 401, wrong.text
    statuses: list[int] = []

    async def attempt(i: int) -> None:
        statuses.append(
            (await login(replicas[i % 2], "wrong-wrong", f"198.51.100.{i}")).status_code
        )

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(attempt, i)
    assert trio.current_time() - start >= 4 * delay
    assert statuses == [401] * 4
