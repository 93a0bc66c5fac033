"""The key sealing sandboxes' environment variables: the setting, else the one every replica
shares in the database.

With --sandbox-env-key the key is that. Without it, the key is the cluster secret
`sandbox-env` (table `cluster_secrets`), made once by whichever replica starts first, so
replicas, and pods whose data directory does not outlive them, read each other's sealed values.
Before the key lived in the database it was `sandbox-env.key` in the data directory: a server
that finds such a file offers it as the key on record (an existing install keeps its key and
everything sealed with it); if another key was recorded first, what only the file's key opens
is sealed again with the recorded one.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path

import trio

from agentserver.cluster import shared_secret
from agentserver.db.database import Database
from agentserver.errors import ConfigError
from agentserver.sandboxes.setup import Sealer
from agentserver.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE = "sandbox-env.key"  # where a server kept the key before it was in the database
KEY_NAME = "sandbox-env"  # its name among the cluster's shared secrets


def key_of_file(data_dir: Path) -> bytes | None:
    """The 32 bytes of the data directory's old key file, or None if there is none."""
    path = data_dir / KEY_FILE
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the sandbox-env key ({exc.strerror})") from None
    try:
        key = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{path} is not a sandbox-env key (32 bytes, URL-safe base64)")
    return key


def sealer_of(key: bytes) -> Sealer:
    return Sealer(base64.urlsafe_b64encode(key))


async def open_sealer(db: Database, settings: Settings) -> Sealer:
    """The server's sealer: the setting's key, else the database's (an old key file adopted)."""
    if settings.sandbox_env_key:
        await trio.lowlevel.checkpoint()
        return Sealer(settings.sandbox_env_key.encode())
    old = key_of_file(settings.data_dir)
    key = await shared_secret(db, KEY_NAME, initial=old)
    sealer = sealer_of(key)
    if old is not None and old != key:
        await reseal(db, sealer, sealer_of(old))
    return sealer


async def reseal(db: Database, sealer: Sealer, old: Sealer) -> int:
    """Seal again with `sealer` every value only `old` opens; how many were."""
    count = 0
    for row in await db.rows("sbx_setup_sealed"):
        sealed = bytes(row["env_sealed"])
        again = sealer.resealed(sealed, old)
        if again is not None:
            count += await db.exec(
                "sbx_setup_reseal", sandbox_id=row["sandbox_id"], old=sealed, new=again
            )
    if count:
        log.warning(
            "%s in the data directory is not the key every replica shares (another server"
            " recorded one first): %d sandboxes' variables were sealed again with the shared key",
            KEY_FILE,
            count,
        )
    return count
