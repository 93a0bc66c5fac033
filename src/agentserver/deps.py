"""The one object through which handlers reach the database, backend, hub and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from agentserver.auth.throttle import Throttle
from agentserver.db.database import Database
from agentserver.settings import Settings


@dataclass
class Deps:
    """Shared services of one running server; built by serve.py, read by every handler."""

    settings: Settings
    db: Database
    nursery: trio.Nursery
    login_throttle: Throttle = field(default_factory=lambda: Throttle(limit=5, window=60.0))
    code_throttle: Throttle = field(default_factory=lambda: Throttle(limit=10, window=60.0))
    # Filled in by the features that own them (sandboxes, tunnel hub, LLM proxy, OIDC).
    extras: dict[str, Any] = field(default_factory=dict)
