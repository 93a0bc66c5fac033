"""Sign-in under abuse: throttles key on the real client, accounts are paced not locked,
registration spends no argon2 work on what it refuses, and argon2 work is bounded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agentserver.auth import passwords
from agentserver.models import User
from tests.conftest import Server, make_settings, register, start_server

PASSWORD = "correct-horse"


def via(address: str) -> dict[str, str]:
    """Headers a reverse proxy on loopback adds for a browser at `address`."""
    return {"X-Forwarded-For": address}


async def login(server: Server, username: str, password: str, **headers: str) -> httpx.Response:
    async with server.client(headers=headers) as client:
        return await client.post(
            "/api/auth/login", json={"username": username, "password": password}
        )


@pytest.fixture
async def proxied(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> Any:
    """A server behind a (loopback) reverse proxy it trusts, with a short pacing delay."""
    srv = await start_server(
        nursery, make_settings(db_url, tmp_path / "data", trusted_proxies="127.0.0.1")
    )
    srv.deps.account_pacer.delay = 0.05  # Deps is frozen: its pacer is tuned in place
    yield srv
    srv.shutdown.set()


async def test_failures_from_one_client_do_not_lock_out_another(proxied: Server) -> None:
    """Behind a trusted proxy, five bad sign-ins from one address lock out that address only."""
    async with proxied.client() as client:
        await register(client, "alice")
    for _ in range(5):
        assert (
            await login(proxied, "alice", "wrong-wrong", **via("203.0.113.5"))
        ).status_code == 401
    attacker = await login(proxied, "alice", PASSWORD, **via("203.0.113.5"))
    assert attacker.status_code == 429
    assert attacker.json()["error"]["code"] == "rate_limited"
    owner = await login(proxied, "alice", PASSWORD, **via("198.51.100.20"))
    assert owner.status_code == 200, owner.text


async def test_an_account_under_spread_attack_is_paced_not_locked(proxied: Server) -> None:
    """Failures from many addresses pace the account; its owner still signs in, and that ends it."""
    async with proxied.client() as client:
        await register(client, "alice")
    for i in range(8):
        response = await login(proxied, "alice", "wrong-wrong", **via(f"203.0.113.{i + 1}"))
        assert response.status_code == 401
    key = await account_key(proxied, "alice")
    assert await proxied.deps.account_pacer.paced(key)
    owner = await login(proxied, "alice", PASSWORD, **via("198.51.100.20"))
    assert owner.status_code == 200, owner.text
    assert not await proxied.deps.account_pacer.paced(key)


async def account_key(server: Server, username: str) -> str:
    user = await server.deps.db.one("get_user_by_username", User, username=username)
    assert user is not None
    return f"user:{user.id}"


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(server: Server) -> None:
    """Without --trusted-proxies a client cannot dodge the address throttle by inventing XFF."""
    statuses = [
        (await login(server, f"user{i}", "wrong-wrong", **via(f"203.0.113.{i}"))).status_code
        for i in range(6)
    ]
    assert statuses == [401] * 5 + [429]


class CountingHasher:
    """Wraps the argon2 hasher: counts hashes and the most checks running at once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hashes = 0
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def hash(self, password: str) -> str:
        with self.lock:
            self.hashes += 1
        return str(self.inner.hash(password))

    def verify(self, stored: str, password: str) -> bool:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return bool(self.inner.verify(stored, password))
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counting = CountingHasher(passwords._HASHER)
    monkeypatch.setattr(passwords, "_HASHER", counting)
    return counting


async def test_refused_registrations_cost_no_hashing(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, hasher: CountingHasher
) -> None:
    """A closed server or a taken username or email is refused before any argon2 work."""
    srv = await start_server(
        nursery, make_settings(db_url, tmp_path / "data", allow_registration="false")
    )
    try:
        async with srv.client() as client:
            await register(client, "admin", email="admin@example.com")
        assert hasher.hashes == 1
        async with srv.client() as client:
            for body in (
                {"username": "bob", "password": PASSWORD},
                {"username": "admin", "password": PASSWORD},
            ):
                response = await client.post("/api/auth/register", json=body)
                assert response.status_code == 403, response.text
        assert hasher.hashes == 1
    finally:
        srv.shutdown.set()


async def test_taken_names_cost_no_hashing(server: Server, hasher: CountingHasher) -> None:
    """On an open server, a taken username or email is a 409 before any argon2 work."""
    async with server.client() as client:
        await register(client, "alice", email="alice@example.com")
    assert hasher.hashes == 1
    async with server.client() as client:
        for body, field in (
            ({"username": "Alice", "password": PASSWORD}, "username"),
            ({"username": "bob", "password": PASSWORD, "email": "ALICE@example.com"}, "email"),
        ):
            response = await client.post("/api/auth/register", json=body)
            assert response.status_code == 409
            assert response.json()["error"]["field"] == field
    assert hasher.hashes == 1


async def test_password_work_per_client_is_limited_before_hashing(
    server: Server, hasher: CountingHasher
) -> None:
    """Past the per-client attempt limit a registration is 429 and hashes nothing."""
    server.deps.password_attempts.limit = 3  # the server's own throttle, window 60 s
    async with server.client() as client:
        statuses = [
            (
                await client.post(
                    "/api/auth/register", json={"username": f"user{i}", "password": PASSWORD}
                )
            ).status_code
            for i in range(4)
        ]
    assert statuses == [201, 201, 201, 429]
    assert hasher.hashes == 3


async def test_concurrent_sign_ins_run_argon2_a_few_at_a_time(
    proxied: Server, hasher: CountingHasher
) -> None:
    """Many sign-ins at once never run more password checks together than the limiter allows."""
    statuses: list[int] = []

    async def attempt(i: int) -> None:
        response = await login(proxied, f"nobody{i}", "wrong-wrong", **via(f"203.0.113.{i}"))
        statuses.append(response.status_code)

    async with trio.open_nursery() as nursery:
        for i in range(24):
            nursery.start_soon(attempt, i)
    assert hasher.most <= passwords.ARGON2_AT_ONCE
    assert hasher.most >= 1
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) >= passwords.ARGON2_AT_ONCE
