"""Every random id and secret the server mints, and their at-rest form (only SHA-256 hashes
are ever stored). Nothing else calls `secrets`: one place says what an id or token looks like.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

# Lower-case base36: a sandbox id ends up in a DNS label (`oc-{id}.{base domain}`), which
# browsers and the proxy's routing (proxy/routing.py) case-fold, and in container and
# Kubernetes object names (DNS-1123: lower-case letters and digits).
_ALPHABET = string.ascii_lowercase + string.digits


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random token with `nbytes` of entropy."""
    return secrets.token_urlsafe(nbytes)


# Personal API tokens start with this, so logs, scanners and people can tell one at a glance.
API_TOKEN_PREFIX = "ast_"  # noqa: S105 (a prefix, not a secret)


def new_api_token() -> str:
    """A personal API token: the recognisable prefix and 32 random bytes."""
    return API_TOKEN_PREFIX + new_token()


def new_code(nbytes: int = 18) -> str:
    """A token people paste into a command line (an agent's one-time code): never starting
    with `-`, which the command's parser would take for an option."""
    while (token := new_token(nbytes)).startswith("-"):
        pass
    return token


def new_id(length: int = 16) -> str:
    """A random DNS-safe identifier (lower-case base36), e.g. for sandbox subdomains."""
    return random_text(length, _ALPHABET)


def random_text(length: int, alphabet: str) -> str:
    """`length` characters drawn uniformly from `alphabet` by the system's secure source."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Whether two secrets are equal, compared in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())
