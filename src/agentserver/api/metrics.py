"""Prometheus labels with fixed value sets, and who may read /metrics.

A label value the client chooses (its method, say) would add a time series per distinct value,
never freed: 300 made-up methods cost 600 KB. So every label takes its value from a fixed set,
and anything else is counted as "other".
"""

from __future__ import annotations

import hmac
from http import HTTPStatus

# RFC 9110 §9 methods plus PATCH (RFC 5789).
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_STATUSES = frozenset(str(int(s)) for s in HTTPStatus)
OTHER = "other"


def method_label(method: str) -> str:
    """The method as a label: a standard one, or "other"."""
    return method if method in METHODS else OTHER


def status_label(status: int) -> str:
    """The status code as a label: a registered one, or "other"."""
    text = str(status)
    return text if text in _STATUSES else OTHER


def metrics_allowed(token: str | None, authorization: str | None) -> bool:
    """Whether a request with this Authorization header may read /metrics: always when no
    token is configured, else only with `Bearer <token>` (compared in constant time)."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
