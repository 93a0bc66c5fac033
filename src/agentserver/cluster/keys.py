"""Secrets every replica shares, kept in the database (`cluster_secrets`).

A secret is made by whichever replica asks first, from `secrets.token_bytes`; the others read
it. So replicas that share a database need no setting to agree on one.
"""

from __future__ import annotations

import hashlib
import secrets

import trio

from agentserver.db.database import Database

RELAY = "relay"
SIZE = 32


async def shared_secret(db: Database, name: str, initial: bytes | None = None) -> bytes:
    """The secret `name`: the one on record, else `initial` (or fresh random bytes) recorded."""
    value = initial if initial is not None else secrets.token_bytes(SIZE)
    for _ in range(2):
        found = await db.scalar("cluster_secret", name=name, value=value)
        if found is not None:
            return bytes(found)
        # A concurrent first insert committed after this statement's snapshot: read again.
    raise RuntimeError(f"the cluster secret {name!r} could not be read or made")


async def relay_secret(db: Database, given: str | None) -> bytes:
    """The key of relayed requests' credentials: from --relay-secret, else the database's."""
    if given:
        await trio.lowlevel.checkpoint()
        return hashlib.sha256(b"agentserver relay\0" + given.encode()).digest()
    return await shared_secret(db, RELAY)
