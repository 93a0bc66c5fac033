"""Request logs: one line per request carrying its request id, and never a secret."""

from __future__ import annotations

import logging

import pytest

from agentserver.auth.sessions import SESSION_COOKIE
from tests.conftest import Server

PASSWORD = "very-secret-password-1"
# Records made by the test's own HTTP client (httpcore logs response headers) are not the server's.
CLIENT_LOGGERS = ("httpx", "httpcore")


def server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]


async def test_one_line_per_request_with_its_request_id(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Every answered request logs exactly one line starting with the X-Request-Id it returned."""
    caplog.set_level(logging.INFO)
    ids = []
    async with server.client() as client:
        for method, url, body in [
            ("GET", "/healthz", None),
            ("GET", "/api/auth/me", None),
            ("POST", "/api/auth/login", {"username": "x", "password": "y"}),
            ("GET", "/api/nope", None),
            ("POST", "/api/auth/login", b"{"),
        ]:
            if isinstance(body, bytes):
                response = await client.request(
                    method, url, content=body, headers={"Content-Type": "application/json"}
                )
            else:
                response = await client.request(method, url, json=body)
            ids.append((response.headers["x-request-id"], method, url, response.status_code))
    lines = [r.getMessage() for r in caplog.records if r.name == "agentserver.http"]
    assert len(lines) == len(ids)
    assert len({i for i, *_ in ids}) == len(ids)
    for (request_id, method, url, status), line in zip(ids, lines, strict=True):
        assert line.startswith(f"{request_id} {method} {url} {status} ")


async def test_a_given_request_id_is_kept_only_if_it_is_tame(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's X-Request-Id is reused when it is a plain token; anything else is replaced."""
    caplog.set_level(logging.INFO)
    async with server.client() as client:
        kept = await client.get("/healthz", headers={"X-Request-Id": "trace-abc.123_X"})
        replaced = await client.get("/healthz", headers={"X-Request-Id": "evil id \x1b[31m"})
    assert kept.headers["x-request-id"] == "trace-abc.123_X"
    assert replaced.headers["x-request-id"] != "evil id \x1b[31m"
    assert replaced.headers["x-request-id"].isalnum()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "\x1b" not in text


async def test_no_secret_reaches_the_logs(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """Across register, login, me and logout no password, token or cookie value is logged."""
    caplog.set_level(logging.DEBUG)
    secrets = [PASSWORD, "wrong-password-2"]
    async with server.client() as client:
        response = await client.post(
            "/api/auth/register", json={"username": "alice", "password": PASSWORD}
        )
        assert response.status_code == 201
        secrets.append(client.cookies[SESSION_COOKIE])
        await client.get("/api/auth/me")
        await client.post("/api/auth/logout")
        bad = await client.post(
            "/api/auth/login", json={"username": "alice", "password": "wrong-password-2"}
        )
        assert bad.status_code == 401
        good = await client.post(
            "/api/auth/login", json={"username": "alice", "password": PASSWORD}
        )
        assert good.status_code == 200
        secrets.append(client.cookies[SESSION_COOKIE])
        await client.get("/api/workspaces?token=query-secret-3")
        secrets.append("query-secret-3")
        await client.post("/api/auth/logout")
    records = server_records(caplog)
    assert any(r.name == "agentserver.http" for r in records)
    for record in records:
        message = record.getMessage() + (record.exc_text or "")
        for secret in secrets:
            assert secret not in message, (record.name, message)
