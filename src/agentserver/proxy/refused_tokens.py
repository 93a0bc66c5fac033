"""Sandbox-host cookies the database just refused, remembered briefly (pure: no I/O).

Every request to an `oc-…` host with a cookie costs a database query until the cookie is
known; a client repeating bogus or revoked cookies would otherwise cost up to three queries a
request and could starve the database pool. Only refusals are remembered, by token hash and
for a few seconds, in a bounded LRU: a valid session is never cached here, so revoking one
takes effect at once, and a refused token can only turn valid by being minted anew (a fresh
random token), so remembering a refusal never locks anyone out.
"""

from __future__ import annotations

from collections import OrderedDict

REMEMBER_SECONDS = 5.0
MAX_REMEMBERED = 8192


class RefusedTokens:
    """(sandbox id, token hash) pairs refused lately, each until its own expiry."""

    def __init__(self, seconds: float = REMEMBER_SECONDS, size: int = MAX_REMEMBERED) -> None:
        self._seconds = seconds
        self._size = size
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()

    def refused(self, key: tuple[str, str], now: float) -> bool:
        """Whether `key` was refused less than the remembering time ago."""
        until = self._until.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[key]
        return False

    def remember(self, key: tuple[str, str], now: float) -> None:
        """Note a refusal; the least recently refused pair goes when the map is full."""
        self._until[key] = now + self._seconds
        self._until.move_to_end(key)
        while len(self._until) > self._size:
            self._until.popitem(last=False)

    def __len__(self) -> int:
        return len(self._until)
