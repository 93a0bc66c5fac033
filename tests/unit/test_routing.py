"""Host header → sandbox target: table tests of proxy/routing.py (pure)."""

from __future__ import annotations

import pytest

from agentserver.proxy.routing import (
    Preview,
    Target,
    Unknown,
    preview_host,
    resolve,
    route,
    sandbox_host,
    sandbox_origin,
    split_port,
)

SID = "abc123def456ghi7"

ROUTES = [
    # (host, base domain, expected)
    (f"oc-{SID}.localhost:8080", "localhost:8080", Target("opencode", SID)),
    (f"claw-{SID}.localhost:8080", "localhost:8080", Target("openclaw", SID)),
    (f"OC-{SID.upper()}.LocalHost:8080", "localhost:8080", Target("opencode", SID)),
    (f"oc-{SID}.example.com", "example.com", Target("opencode", SID)),
    (f"oc-{SID}.example.com:443", "example.com", Target("opencode", SID)),
    (f"oc-{SID}.example.com.", "example.com", Target("opencode", SID)),
    (f"oc-{SID}.localhost:9999", "localhost:8080", Target("opencode", SID)),  # ports ignored
    (f"oc-{SID}.example.com", "Example.COM.", Target("opencode", SID)),
    (b"oc-" + SID.encode() + b".example.com", "example.com", Target("opencode", SID)),
    # the main site and everything else
    ("localhost:8080", "localhost:8080", None),
    ("example.com", "example.com", None),
    ("www.example.com", "example.com", None),
    (f"oc-{SID}.evil.com", "example.com", None),
    (f"oc-{SID}.example.com.evil.com", "example.com", None),
    (f"oc-{SID}example.com", "example.com", None),
    (f"x.oc-{SID}.example.com", "example.com", None),  # only one label above the base
    (f"oc-{SID}.sub.example.com", "example.com", None),
    ("oc-.example.com", "example.com", None),
    ("oc-abc_def.example.com", "example.com", None),
    ("oc-abc%2e.example.com", "example.com", None),
    ("claw-.example.com", "example.com", None),
    ("ocabc.example.com", "example.com", None),
    ("", "example.com", None),
    (None, "example.com", None),
    (b"\xff\xfe.example.com", "example.com", None),
    ("[::1]:8080", "localhost:8080", None),
    (f"oc-{SID}.example.com", "", None),
]


@pytest.mark.parametrize(("host", "base", "expected"), ROUTES)
def test_route(host: str | bytes | None, base: str, expected: Target | None) -> None:
    """Each Host header maps to the sandbox it names under the base domain, or to the main site."""
    assert route(host, base) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost:8080", "localhost"),
        ("example.com", "example.com"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("host:notaport", "host:notaport"),
    ],
)
def test_split_port(host: str, expected: str) -> None:
    """A trailing numeric port is removed and an IPv6 literal keeps its brackets."""
    assert split_port(host) == expected


def test_sandbox_origin_round_trips_through_route() -> None:
    """The host built for a sandbox routes back to the same sandbox, kind and id."""
    for kind in ("opencode", "openclaw"):
        host = sandbox_host(kind, SID, "localhost:8080")  # type: ignore[arg-type]
        assert route(host, "localhost:8080") == Target(kind, SID)  # type: ignore[arg-type]
    assert (
        sandbox_origin("opencode", SID, "https", "example.com") == f"https://oc-{SID}.example.com"
    )


RESOLVED = [
    # (host, base domain, expected): the main site is None, a sandbox its Target
    ("localhost:8080", "localhost:8080", None),
    ("example.com", "example.com", None),
    ("EXAMPLE.com.:443", "example.com", None),
    ("127.0.0.1:8080", "localhost:8080", None),  # not under the base domain: the main site
    ("[::1]:8080", "localhost:8080", None),
    ("other.org", "example.com", None),
    ("", "example.com", None),
    (None, "example.com", None),
    (f"oc-{SID}.example.com", "", None),
    (f"oc-{SID}.example.com", "example.com", Target("opencode", SID)),
    # under the base domain but no sandbox: never the main site
    ("www.example.com", "example.com", Unknown("host")),
    ("anything.localhost:8080", "localhost:8080", Unknown("host")),
    (f"x.oc-{SID}.example.com", "example.com", Unknown("host")),
    ("ocabc.example.com", "example.com", Unknown("host")),
    (b"\xff\xfe.example.com", "example.com", Unknown("host")),
    ("oc-.example.com", "example.com", Unknown("sandbox")),
    ("oc-abc_def.example.com", "example.com", Unknown("sandbox")),
    (f"oc-{SID}.sub.example.com", "example.com", Unknown("sandbox")),
    (f"p3000-{SID}.example.com", "example.com", Preview(SID, 3000)),
    (f"P5173-{SID}.localhost:8080", "localhost:8080", Preview(SID, 5173)),
    # any 1-5 digit port is a preview host; the proxy refuses the ports it never serves
    (f"p99999-{SID}.example.com", "example.com", Preview(SID, 99999)),
    (f"p80-{SID}.example.com", "example.com", Preview(SID, 80)),
    (f"p123456-{SID}.example.com", "example.com", Unknown("host")),
    (f"p3000-{SID}_x.example.com", "example.com", Unknown("host")),
    (f"p3000{SID}.example.com", "example.com", Unknown("host")),
    (f"p-{SID}.example.com", "example.com", Unknown("host")),
]


@pytest.mark.parametrize(("host", "base", "expected"), RESOLVED)
def test_resolve(
    host: str | bytes | None, base: str, expected: Target | Preview | Unknown | None
) -> None:
    """A Host is the main site only as the base domain itself or outside it; any other name
    under the base domain that is no sandbox resolves to Unknown (a 404)."""
    assert resolve(host, base) == expected


def test_configured_main_names_under_the_base_domain_are_the_main_site() -> None:
    """A name the configuration gives the server itself (an OAuth callback host) is the main
    site even under the base domain; other names there stay unknown."""
    main = frozenset({"login.example.com"})
    assert resolve("Login.Example.com:8443", "example.com", main) is None
    assert resolve("www.example.com", "example.com", main) == Unknown("host")
    assert resolve(f"oc-{SID}.example.com", "example.com", main) == Target("opencode", SID)


def test_a_preview_host_round_trips_through_route() -> None:
    """The host built for a preview routes back to the same sandbox and port, on both paths'
    router (`route`, the fast path's) as on `resolve`."""
    host = preview_host(SID, 5173, "localhost:8080")
    assert host == f"p5173-{SID}.localhost:8080"
    assert route(host, "localhost:8080") == Preview(SID, 5173)
    assert route(f"p5173-{SID}.other.org", "localhost:8080") is None
