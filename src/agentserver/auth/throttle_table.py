"""Throttle counts in PostgreSQL (`throttle_hits`, migration 0025), shared by every replica.

The rule is `MemoryCounts`' (auth/throttle.py), run by the database under each key's row lock,
on the database's clock. Keys are stored as an HMAC under a secret every replica shares, never
in clear: a typed login may be a password typed into the wrong box.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from agentserver.auth.throttle import Ask, Standing, whole_seconds
from agentserver.db.database import Database


class DatabaseCounts:
    """`Counts` in the `throttle_hits` table: one round trip per call."""

    def __init__(
        self, db: Database, secret: bytes, clock: Callable[[], float] | None = None
    ) -> None:
        self.db = db
        self._secret = secret
        # Tests only: a clock to count by (seconds since the epoch); None is the database's.
        self._clock = clock

    def key_hash(self, key: str) -> bytes:
        """How `key` is stored."""
        return hmac.new(self._secret, key.encode(), hashlib.sha256).digest()

    def _at(self) -> datetime | None:
        return None if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)

    async def ask(self, asks: Sequence[Ask]) -> list[Standing]:
        rows = await self.db.rows(
            "throttle_ask",
            scopes=[a.throttle.scope for a in asks],
            keys=[self.key_hash(a.key) for a in asks],
            windows=[float(a.throttle.window) for a in asks],
            limits=[a.throttle.limit for a in asks],
            spends=[a.spend for a in asks],
            at=self._at(),
        )
        return [Standing(int(row["recent"]), whole_seconds(float(row["wait"]))) for row in rows]

    async def fail(self, asks: Sequence[Ask]) -> None:
        # Each key once: one statement cannot update a row twice.
        unique = {(a.throttle.scope, a.key): a for a in asks}.values()
        await self.db.exec(
            "throttle_fail",
            scopes=[a.throttle.scope for a in unique],
            keys=[self.key_hash(a.key) for a in unique],
            windows=[float(a.throttle.window) for a in unique],
            at=self._at(),
        )

    async def clear(self, scope: str, keys: Sequence[str]) -> None:
        await self.db.exec(
            "throttle_clear",
            scopes=[scope] * len(keys),
            keys=[self.key_hash(key) for key in keys],
        )

    async def turn(self, scope: str, key: str, delay: float, most_ahead: float) -> float | None:
        wait = await self.db.scalar(
            "throttle_turn",
            scope=scope,
            key_hash=self.key_hash(key),
            delay=float(delay),
            most_ahead=float(most_ahead),
            at=self._at(),
        )
        return None if wait is None else float(wait)


def throttle_secret(cluster_secret: bytes) -> bytes:
    """The key of the stored keys' HMAC, derived from a secret every replica shares."""
    return hmac.new(cluster_secret, b"agentserver throttle keys", hashlib.sha256).digest()
