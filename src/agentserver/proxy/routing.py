"""Which sandbox, if any, a request's Host header names (pure: no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from agentserver.kinds import BY_NAME, BY_PREFIX
from agentserver.kinds import Name as Kind

# The subdomain label prefix of each kind of agent, from the kinds table (kinds.py).
PREFIXES: dict[str, Kind] = {prefix: kind.name for prefix, kind in BY_PREFIX.items()}
PREFIX_OF: dict[Kind, str] = {name: kind.prefix for name, kind in BY_NAME.items()}

# Sandbox ids are lower-case base36 (auth.tokens.new_id); anything else is not ours.
_ID = re.compile(r"[a-z0-9]{1,64}")


@dataclass(frozen=True, slots=True)
class Target:
    """A request meant for one sandbox's agent, reached through its own subdomain."""

    kind: Kind
    sandbox_id: str


@dataclass(frozen=True, slots=True)
class Preview:
    """A request meant for a dev server on `port` inside one sandbox (`p{port}-{id}`). The
    port is as written in the host: whether it may be reached is the proxy's to decide
    (proxy/preview_rules.py)."""

    sandbox_id: str
    port: int


# Whatever a sandbox host names: its agent or one of its ports.
Route = Target | Preview


def split_port(host: str) -> str:
    """`host` without a trailing `:port` (an IPv6 literal keeps its brackets)."""
    if host.startswith("["):
        end = host.find("]")
        return host if end < 0 else host[: end + 1]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


@dataclass(frozen=True, slots=True)
class Unknown:
    """A host under the base domain that is neither the main site nor a sandbox: a 404.

    `what` says which: a malformed sandbox name, or any other name (`www.`, deeper names):
    never the dashboard, which would give a lookalike host the main site's pages.
    """

    what: Literal["sandbox", "host"]


# `p{port}-{id}`: a dev server's port inside a sandbox (a preview).
_PREVIEW = re.compile(r"p([0-9]{1,5})-([a-z0-9]{1,64})")


def resolve(
    host: str | bytes | None, base_domain: str, main_names: frozenset[str] = frozenset()
) -> Target | Preview | Unknown | None:
    """What a Host header names: a sandbox's agent or one of its ports (a preview), an
    unknown host under `base_domain`, or (None) the main site — the base domain itself, any
    host outside it (an IP address, another name the server is reached by) or one of
    `main_names` (host names, without ports, that the configuration gives the server itself,
    e.g. its OAuth callback URL's).

    Ports are ignored on both sides (a front proxy may change them), case and a trailing dot
    do not matter, and only exactly one label above the base domain is a sandbox.
    """
    if not host:
        return None
    if isinstance(host, bytes):
        host = host.decode("latin-1")  # a non-ASCII name is no sandbox; it may be unknown
    name = split_port(host.strip().lower()).rstrip(".")
    base = split_port(base_domain.strip().lower()).strip(".")
    if not base or not name.endswith("." + base) or name in main_names:
        return None
    label = name[: -len(base) - 1]
    for prefix, kind in PREFIXES.items():
        if label.startswith(prefix):
            sandbox_id = label[len(prefix) :]
            return Target(kind, sandbox_id) if _ID.fullmatch(sandbox_id) else Unknown("sandbox")
    preview = _PREVIEW.fullmatch(label)
    if preview is not None:
        return Preview(preview.group(2), int(preview.group(1)))
    return Unknown("host")


def route(host: str | bytes | None, base_domain: str) -> Target | Preview | None:
    """The sandbox (or sandbox port) a Host header names under `base_domain`, or None for
    anything else (`resolve` tells the main site from unknown hosts)."""
    found = resolve(host, base_domain)
    return found if isinstance(found, Target | Preview) else None


def sandbox_host(kind: Kind, sandbox_id: str, base_domain: str) -> str:
    """The Host (with the base domain's port, if any) at which a sandbox is served."""
    return f"{PREFIX_OF[kind]}{sandbox_id}.{base_domain}"


def preview_host(sandbox_id: str, port: int, base_domain: str) -> str:
    """The Host (with the base domain's port, if any) of a preview of `port` in a sandbox."""
    return f"p{port}-{sandbox_id}.{base_domain}"


def sandbox_origin(kind: Kind, sandbox_id: str, scheme: str, base_domain: str) -> str:
    """The browser origin of a sandbox's subdomain, e.g. `http://oc-abc.localhost:8080`."""
    return f"{scheme}://{sandbox_host(kind, sandbox_id, base_domain)}"
