"""Bad input never causes a 500: broken JSON, wrong types, unknown fields, big bodies, dead DB."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import Server, make_settings, register, start_server
from tests.support.accounts import owner_of_workspace

BAD_BODIES: list[tuple[str, bytes]] = [
    ("malformed JSON", b'{"username": "alice", '),
    ("not JSON at all", b"username=alice&password=x"),
    ("a JSON array", b'["alice", "correct-horse"]'),
    ("a JSON string", b'"alice"'),
    ("JSON null", b"null"),
    ("empty body", b""),
    ("invalid UTF-8", b'{"username": "\xff\xfe"}'),
    ("deeply nested", b"[" * 5000 + b"]" * 5000),
]


def error_of(response: Any) -> dict[str, Any]:
    """The error object, after checking the shape every error answer has."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str)
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return dict(body["error"])


async def test_malformed_bodies_are_clear_400s(server: Server) -> None:
    """Every kind of broken body on every JSON route is a 400 in the error shape, never a 500."""
    async with server.client() as client:
        _, ws = await owner_of_workspace(client, "alice")
        me = (await client.get("/api/auth/me")).json()
        routes = [
            ("POST", "/api/auth/register"),
            ("POST", "/api/auth/login"),
            ("POST", "/api/workspaces"),
            ("PATCH", f"/api/workspaces/{ws['id']}"),
            ("POST", f"/api/workspaces/{ws['id']}/members"),
            ("PUT", f"/api/workspaces/{ws['id']}/members/{me['id']}"),
        ]
        for method, url in routes:
            for label, content in BAD_BODIES:
                response = await client.request(
                    method, url, content=content, headers={"Content-Type": "application/json"}
                )
                assert response.status_code == 400, (method, url, label, response.text)
                assert error_of(response)["code"] == "invalid"


async def test_wrong_types_missing_and_unknown_fields_name_the_field(server: Server) -> None:
    """A wrong type, a missing field or an unknown field is a 400 whose `field` names it."""
    cases = [
        ({"username": 5, "password": "correct-horse"}, "username"),
        ({"username": "alice", "password": ["x"]}, "password"),
        ({"username": "alice"}, "password"),
        ({"username": "alice", "password": "correct-horse", "admin": True}, "admin"),
        ({"username": "alice", "password": "correct-horse", "email": 7}, "email"),
    ]
    async with server.client() as client:
        for body, field in cases:
            response = await client.post("/api/auth/register", json=body)
            assert response.status_code == 400, body
            error = error_of(response)
            assert error["field"] == field, (body, error)
            assert field in error["message"]
        huge = await client.post("/api/auth/login", json={"username": "a" * 5000, "password": "x"})
        assert huge.status_code == 400
        assert error_of(huge)["field"] == "username"
        unknown = await client.post(
            "/api/auth/login", json={"username": "a", "password": "b", "remember": True}
        )
        assert error_of(unknown)["message"] == "remember: unknown field"


async def test_a_body_over_the_limit_is_413(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A body larger than --max-body is refused with 413, with or without Content-Length."""
    srv = await start_server(nursery, make_settings(db_url, tmp_path, max_body="1KiB"))
    try:
        async with srv.client() as client:
            big = {"username": "alice", "password": "x" * 2000}
            response = await client.post("/api/auth/register", json=big)
            assert response.status_code == 413
            assert error_of(response)["code"] == "too_large"

            async def chunks() -> Any:
                for _ in range(4):
                    yield b" " * 512

            streamed = await client.post(
                "/api/auth/register", content=chunks(), headers={"Content-Type": "application/json"}
            )
            assert streamed.status_code == 413
            small = await client.post(
                "/api/auth/register", json={"username": "alice", "password": "correct-horse"}
            )
            assert small.status_code == 201
    finally:
        srv.shutdown.set()


async def test_unknown_routes_methods_and_odd_ids(server: Server) -> None:
    """Unknown paths are 404, wrong methods 405, odd ids 404/400: all JSON errors, none 500."""
    async with server.client() as client:
        await register(client, "alice")
        assert error_of(await client.get("/api/nope"))["code"] == "not_found"
        wrong = await client.put("/api/workspaces")
        assert wrong.status_code == 405
        assert error_of(wrong)["code"] == "method_not_allowed"
        for odd in (
            "%00",
            "x" * 5000,
            "%E2%80%AE",
            "'; DROP TABLE users; --",
            "..%2F..%2Fetc",
            "%FF",
            "%ZZ",
        ):
            response = await client.get(f"/api/workspaces/{odd}")
            assert response.status_code in (400, 404), (odd, response.status_code)
            error_of(response)
        nul = await client.post("/api/auth/login", json={"username": "a\x00b", "password": "x"})
        assert nul.status_code in (400, 401)
        error_of(nul)
        nul_email = await client.post(
            "/api/auth/register",
            json={"username": "bob", "password": "correct-horse", "email": "b\x00b@example.com"},
        )
        assert nul_email.status_code == 400
        assert error_of(nul_email)["field"] == "email"


async def test_openapi_describes_every_route(server: Server) -> None:
    """/openapi.json lists every API route of the app, with its methods."""
    from agentserver.api.app import create_app

    app = create_app(server.deps)
    async with server.client() as client:
        spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or getattr(rule, "websocket", False):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        path = re.sub(r"\{\w+:(\w+)\}", r"{\1}", path)
        assert path in paths, path
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], (method, path)
    assert "/api/auth/register" in paths
    register_body = paths["/api/auth/register"]["post"]["requestBody"]
    assert register_body["content"]["application/json"]["schema"]


async def test_health_ready_and_metrics(server: Server) -> None:
    """/healthz and /readyz answer 200; /metrics counts requests by route and status."""
    async with server.client() as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["database"] is True
        await client.get("/api/auth/me")
        await client.get("/api/auth/me")
        metrics = (await client.get("/metrics")).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("agentserver_http_requests_total{")
        and 'route="/api/auth/me"' in line
        and 'status="401"' in line
    )
    assert line.endswith(" 2.0")
    assert any(
        line.startswith("agentserver_http_request_seconds_count{")
        and 'route="/api/auth/me"' in line
        and 'status="401"' in line
        and line.endswith(" 2.0")
        for line in metrics.splitlines()
    )
    assert 'route="/readyz"' in metrics


async def test_a_dead_database_is_503_not_500(server: Server, db_url: str, postgres: str) -> None:
    """With the database refusing connections, /readyz and API calls answer 503, then recover."""
    name = conninfo_to_dict(db_url)["dbname"]
    server.deps.db.pool.timeout = 1.0  # how long a request waits for a connection; keeps this fast
    async with server.client() as client:
        await register(client, "alice")
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        try:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["database"] is False
            for method, url in (("GET", "/api/auth/me"), ("POST", "/api/workspaces")):
                response = await client.request(method, url, json={"name": "w"})
                assert response.status_code == 503, (url, response.text)
                assert error_of(response)["code"] == "database_unavailable"
            login = await client.post(
                "/api/auth/login", json={"username": "alice", "password": "correct-horse"}
            )
            assert login.status_code == 503
        finally:
            with psycopg.connect(postgres, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # The pool reconnects in the background; wait (bounded) for readiness to come back.
        with trio.fail_after(60):
            while (await client.get("/readyz")).status_code != 200:
                await trio.sleep(0.2)
        assert (await client.get("/api/auth/me")).status_code == 200


async def test_logs_lines_that_are_not_plain_digits_are_400(server: Server) -> None:
    """`?lines=` of a superscript, Arabic-Indic or repeated digits is a 400 naming `lines`."""
    async with server.client() as client:
        _, ws = await owner_of_workspace(client, "alice")
        created = await client.post(f"/api/workspaces/{ws['id']}/sandboxes", json={"name": "s"})
        assert created.status_code == 201, created.text
        url = f"/api/sandboxes/{created.json()['id']}/logs"
        for query in ("²", "١٢", "0", "5001", "1e3", "lots"):
            response = await client.get(url, params={"lines": query})
            assert response.status_code == 400, (query, response.text)
            assert error_of(response)["field"] == "lines", query
        twice = await client.get(f"{url}?lines=1&lines=2")
        assert twice.status_code == 400, twice.text
        assert (await client.get(url, params={"lines": "3"})).status_code == 200


async def test_usage_at_the_ends_of_the_calendar_is_not_a_500(server: Server) -> None:
    """A usage period touching year 1 or year 9999 answers 200 with an empty count, not a 500."""
    async with server.client() as client:
        _, ws = await owner_of_workspace(client, "alice")
        url = f"/api/workspaces/{ws['id']}/usage"
        for params in (
            {"to": "9999-12-31"},
            {"to": "0001-01-01"},
            {"from": "0001-01-01", "to": "9999-12-31"},
            {"to": "0001-01-01T00:00:00+00:00"},
        ):
            response = await client.get(url, params=params)
            assert response.status_code == 200, (params, response.text)
            assert response.json()["totals"]["requests"] == 0
        late = await client.get(url, params={"from": "9999-12-31"})  # after `to` (now)
        assert late.status_code == 400, late.text
        assert error_of(late)["field"] == "from"


async def test_405_names_the_allowed_methods(server: Server) -> None:
    """A method a route does not take is a 405 whose `Allow` lists the methods it does take."""
    async with server.client() as client:
        await register(client, "alice")
        wrong = await client.put("/api/workspaces")
        assert wrong.status_code == 405
        allowed = {m.strip() for m in wrong.headers["allow"].split(",")}
        assert {"GET", "POST"} <= allowed
        assert "PUT" not in allowed
        wrong_on_item = await client.post("/api/sandboxes/abc")
        assert wrong_on_item.status_code == 405
        assert "DELETE" in wrong_on_item.headers["allow"]


async def test_openapi_describes_answers_query_parameters_and_constraints(server: Server) -> None:
    """Every operation in /openapi.json has a success answer and the error shape as `default`;
    query parameters and their bounds are listed (e.g. `lines` of logs, `from`/`to` of usage)."""
    async with server.client() as client:
        spec = (await client.get("/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            assert any(code.startswith(("2", "3")) for code in answers), (method, path)
            error = answers["default"]["content"]["application/json"]["schema"]
            assert error["required"] == ["error"], (method, path)
    logs = spec["paths"]["/api/sandboxes/{sandbox_id}/logs"]["get"]
    lines = next(p for p in logs["parameters"] if p["name"] == "lines")
    assert lines["in"] == "query"
    assert (lines["schema"]["minimum"], lines["schema"]["maximum"]) == (1, 5000)
    usage = spec["paths"]["/api/workspaces/{workspace_id}/usage"]["get"]
    assert {p["name"] for p in usage["parameters"] if p["in"] == "query"} == {"from", "to"}
    sandbox = spec["paths"]["/api/sandboxes/{sandbox_id}"]["get"]["responses"]["200"]
    schema = sandbox["content"]["application/json"]["schema"]
    # In full, or withheld (someone else's private sandbox): either way it has a status.
    shapes = schema.get("anyOf", [schema])
    assert len(shapes) == 2
    assert all("status" in shape["required"] for shape in shapes)
