"""The audit log: who did what to which thing, when, from where, and how it ended."""

from agentserver.audit.entries import (
    Action,
    Actor,
    ActorKind,
    Entry,
    Result,
    Target,
)
from agentserver.audit.writer import AuditLog, open_audit_log

__all__ = [
    "Action",
    "Actor",
    "ActorKind",
    "AuditLog",
    "Entry",
    "Result",
    "Target",
    "open_audit_log",
]
