"""The server serves the web UI: index, versioned immutable assets, SPA routes, security headers."""

from __future__ import annotations

import re

from agentserver.api.web import IMMUTABLE, load_site
from agentserver.db.paths import web_dir
from tests.conftest import Server


async def test_index_has_security_headers_and_versioned_assets(server: Server) -> None:
    """`/` is never cached, carries the CSP and frame protections, and links assets with ?v=."""
    async with server.client() as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    csp = response.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
    version = load_site(web_dir()).version
    assert f'src="/app.js?v={version}"' in response.text
    assert f'href="/style.css?v={version}"' in response.text
    assert "<script>" not in response.text  # no inline script: the CSP would refuse it


async def test_versioned_asset_is_immutable_and_unversioned_revalidates(server: Server) -> None:
    """With the current ?v= an asset is cached for a year; without it, it revalidates (ETag)."""
    version = load_site(web_dir()).version
    async with server.client() as client:
        fresh = await client.get(f"/app.js?v={version}")
        plain = await client.get("/app.js")
        stale = await client.get("/app.js?v=0.0.0-old")
        again = await client.get("/app.js", headers={"If-None-Match": plain.headers["etag"]})
    assert fresh.status_code == 200
    assert fresh.headers["cache-control"] == IMMUTABLE
    assert fresh.headers["content-type"].startswith("text/javascript")
    assert plain.headers["cache-control"] == "no-cache"
    assert stale.headers["cache-control"] == "no-cache"
    assert again.status_code == 304


async def test_module_imports_carry_the_same_version(server: Server) -> None:
    """Every relative import in served modules has the site's ?v=, so each module loads once."""
    version = load_site(web_dir()).version
    async with server.client() as client:
        app = (await client.get("/app.js")).text
        hooks = (await client.get("/vendor/hooks.module.js")).text
    imports = re.findall(r"""from\s*["']([^"']+)["']""", app)
    assert imports
    assert all(spec.endswith(f"?v={version}") for spec in imports)
    assert f'"./preact.module.js?v={version}"' in hooks


async def test_client_routes_fall_back_to_index_but_api_stays_json(server: Server) -> None:
    """Unknown page paths get index.html; unknown /api paths and missing files get a JSON 404."""
    async with server.client() as client:
        page = await client.get("/w/abc/members")
        api = await client.get("/api/nope")
        missing = await client.get("/nope.js")
        health = await client.get("/healthz")
    assert page.status_code == 200
    assert 'id="app"' in page.text
    assert page.headers["content-security-policy"]
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"
    assert missing.status_code == 404
    assert health.status_code == 200


async def test_api_routes_win_over_the_catch_all(server: Server) -> None:
    """A real API route answers JSON even though the web blueprint has a catch-all."""
    async with server.client() as client:
        response = await client.get("/api/auth/config")
    assert response.status_code == 200
    assert response.json()["user"] is None
