"""/metrics: label values from fixed sets whatever clients send, and the optional bearer token."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.conftest import Server, make_settings, start_server

TOKEN = "metrics-token-123"


def series(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if line.startswith("agentserver_http_requests_total{")
    ]


async def test_made_up_methods_do_not_mint_new_series(server: Server) -> None:
    """300 requests with 300 invented methods add at most one series (method="other"),
    not 300 that would never be freed."""
    async with server.client() as client:
        before = series((await client.get("/metrics")).text)
        for n in range(300):
            response = await client.request(f"MADEUP{n}", "/healthz")
            assert response.status_code == 405
        text = (await client.get("/metrics")).text
    after = series(text)
    assert "MADEUP" not in text
    assert len(after) - len(before) <= 2  # method="other" (and the second GET /metrics)
    assert any('method="other"' in line and line.endswith(" 300.0") for line in after)


async def test_metrics_token_is_required_when_set(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With --metrics-token set, /metrics answers 401 (JSON) without it or with a wrong one,
    and the exposition with `Authorization: Bearer <token>`."""
    server = await start_server(
        nursery, make_settings(db_url, tmp_path / "data", metrics_token=TOKEN)
    )
    async with server.client() as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        basic = await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        right = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
    assert right.status_code == 200
    assert "agentserver_http_requests_total" in right.text


async def test_metrics_are_open_without_a_token(server: Server) -> None:
    """Without --metrics-token, /metrics needs no credentials (as before)."""
    async with server.client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
