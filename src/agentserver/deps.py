"""The one object through which handlers reach the database, backend, hub and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from agentserver.auth.pacing import AccountPacer
from agentserver.auth.throttle import Throttle
from agentserver.db.database import Database
from agentserver.settings import Settings


@dataclass
class Deps:
    """Shared services of one running server; built by serve.py, read by every handler."""

    settings: Settings
    db: Database
    nursery: trio.Nursery
    # Failed sign-ins per client address: past the limit that address is refused for a while.
    login_throttle: Throttle = field(default_factory=lambda: Throttle(limit=5, window=60.0))
    # Failed sign-ins per account: past the limit attempts are paced, never locked out.
    account_pacer: AccountPacer = field(default_factory=AccountPacer)
    # Password work (sign-in, registration) per client address, counted before any hashing.
    password_attempts: Throttle = field(default_factory=lambda: Throttle(limit=30, window=60.0))
    code_throttle: Throttle = field(default_factory=lambda: Throttle(limit=10, window=60.0))
    # Filled in by the features that own them (sandboxes, tunnel hub, LLM proxy, OIDC).
    extras: dict[str, Any] = field(default_factory=dict)
