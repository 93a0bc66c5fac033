"""The browser UI: index.html, versioned static assets, client-side routes and security headers."""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

import trio
from quart import Blueprint, Response, request

from agentserver import __version__
from agentserver.db.paths import web_dir
from agentserver.errors import NotFound

blueprint = Blueprint("web", __name__)

# Everything the page loads is a file of ours: no inline script or style, nothing from elsewhere.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
IMMUTABLE = "public, max-age=31536000, immutable"
# Paths that belong to the server, never to the single-page app.
RESERVED = ("api/", "proxy/", "_agentserver/")
RESERVED_EXACT = {"api", "proxy", "healthz", "readyz", "metrics", "openapi.json"}
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".map": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
}
# Relative module specifiers (`from "./x.js"`, `import("../y.js")`) and local URLs in index.html.
_JS_IMPORT = re.compile(r"""(\bfrom\s*|\bimport\s*\(?\s*)(["'])(\.{1,2}/[^"'?#\s]+\.js)\2""")
_HTML_ASSET = re.compile(r"""(\b(?:src|href)=)(["'])(/[^"'?#\s]+\.(?:js|css|svg|png|ico))\2""")


@dataclass(frozen=True, slots=True)
class Asset:
    """One file ready to send: its body (with versioned URLs) and headers."""

    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Site:
    """The whole web directory, read once; `version` changes whenever any file changes."""

    version: str
    assets: dict[str, Asset]


def _content_type(path: Path) -> str:
    return (
        _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def _versioned(text: str, pattern: re.Pattern[str], version: str) -> str:
    return pattern.sub(lambda m: f"{m[1]}{m[2]}{m[3]}?v={version}{m[2]}", text)


def load_site(root: Path) -> Site:
    """Read every file under `root`, stamp asset URLs with one version for the whole set.

    Every module, vendored ones included, imports the others with the same `?v=`, so each module
    is fetched (and evaluated) once and a new release never mixes with cached old modules.
    """
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    raw: dict[str, bytes] = {}
    for path in files:
        name = path.relative_to(root).as_posix()
        raw[name] = path.read_bytes()
        digest.update(name.encode() + b"\0" + raw[name] + b"\0")
    version = f"{__version__}-{digest.hexdigest()[:12]}"
    assets: dict[str, Asset] = {}
    for name, body in raw.items():
        if name.endswith(".js"):
            body = _versioned(body.decode(), _JS_IMPORT, version).encode()
        elif name == "index.html":
            body = _versioned(body.decode(), _HTML_ASSET, version).encode()
        etag = hashlib.sha256(body).hexdigest()[:20]
        assets[name] = Asset(body=body, content_type=_content_type(Path(name)), etag=f'"{etag}"')
    return Site(version=version, assets=assets)


Stamp = tuple[tuple[str, int, int], ...]
_sites: dict[Path, tuple[Stamp, Site]] = {}


def stamp_of(root: Path) -> Stamp:
    """Name, modification time and size of every file: cheap to take, changes with any edit."""
    found = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return tuple(
        (p.relative_to(root).as_posix(), p.stat().st_mtime_ns, p.stat().st_size) for p in found
    )


async def site(*, recheck: bool = False) -> Site:
    """The site for the web directory, read on first use and again when its files change.

    Only page loads (`recheck`) look for changes, so an edited UI shows on the next reload
    while assets are answered from memory. Disk reads run in a thread.
    """
    root = web_dir()
    known = _sites.get(root)
    if known is None or recheck:
        current = await trio.to_thread.run_sync(stamp_of, root)
        if known is None or known[0] != current:
            known = (current, await trio.to_thread.run_sync(load_site, root))
            _sites[root] = known
    else:
        await trio.lowlevel.checkpoint()  # answered from memory: still a cancellation point
    return known[1]


def _send(asset: Asset, cache: str) -> Response:
    if request.headers.get("If-None-Match") == asset.etag:
        response = Response(b"", status=304)
    else:
        response = Response(asset.body, content_type=asset.content_type)
    response.headers["ETag"] = asset.etag
    response.headers["Cache-Control"] = cache
    return response


def _is_reserved(path: str) -> bool:
    return path in RESERVED_EXACT or path.startswith(RESERVED)


@blueprint.after_request
async def protect(response: Response) -> Response:
    """Every page and asset of the main site carries the CSP and frame protections."""
    await trio.lowlevel.checkpoint()  # Quart would run a sync hook in a worker thread
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


@blueprint.get("/")
async def index() -> Response:
    """The single page; never cached, so a new release is picked up on the next load."""
    page = (await site(recheck=True)).assets.get("index.html")
    if page is None:
        raise NotFound("the web UI is not installed (no index.html)")
    return _send(page, "no-cache")


@blueprint.get("/<path:path>")
async def asset_or_route(path: str) -> Response:
    """A static file (immutable when versioned), or index.html for a client-side route."""
    if _is_reserved(path):
        raise NotFound("no such route")
    current = await site()
    asset = current.assets.get(path)
    if asset is not None:
        versioned = request.args.get("v") == current.version
        return _send(asset, IMMUTABLE if versioned else "no-cache")
    if "." in path.rsplit("/", 1)[-1]:
        raise NotFound("no such file")
    return await index()
