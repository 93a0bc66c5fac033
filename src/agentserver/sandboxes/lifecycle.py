"""The sandbox state machine, declared once as a table (pure: no I/O).

Every status change goes through `Sandboxes.set_status`, one conditional
`UPDATE … WHERE id = :id AND status = ANY(:expected)`; this table says which of those
updates are legal at all, so two clicks, the idle watcher and a crashing process can race
without ever producing a transition that is not listed here.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentserver.errors import Conflict
from agentserver.models import SandboxStatus as S

# from-status → the statuses it may move to, and why.
TRANSITIONS: dict[S, frozenset[S]] = {
    # the backend started it (health check answered) · or the start failed
    S.CREATING: frozenset({S.RUNNING, S.FAILED}),
    # pause (user or idle) · restart (user, or after a server restart) · local agent gone · crash
    S.RUNNING: frozenset({S.PAUSING, S.RESUMING, S.OFFLINE, S.FAILED}),
    # the backend stopped it, files kept · stopping failed
    S.PAUSING: frozenset({S.PAUSED, S.FAILED}),
    # resume (user or a request to its URL) · restart (user)
    S.PAUSED: frozenset({S.RESUMING}),
    # the backend started it again · or that failed
    S.RESUMING: frozenset({S.RUNNING, S.FAILED}),
    # a local agent reconnected
    S.OFFLINE: frozenset({S.RUNNING}),
    # retry: start it again from its kept files
    S.FAILED: frozenset({S.RESUMING}),
}

# Statuses in which the backend may have something running that must be stopped.
ACTIVE: frozenset[S] = frozenset({S.CREATING, S.RUNNING, S.RESUMING, S.PAUSING})
# What the API accepts as "pause" and "resume".
PAUSABLE: frozenset[S] = frozenset({S.RUNNING})
RESUMABLE: frozenset[S] = frozenset({S.PAUSED, S.FAILED})
# What the API accepts as "restart": → resuming, then the agent is stopped and started again.
RESTARTABLE: frozenset[S] = frozenset({S.RUNNING, S.PAUSED})


def can(current: S | str, new: S | str) -> bool:
    """True when a sandbox in `current` may move to `new`."""
    return S(new) in TRANSITIONS[S(current)]


def expected_statuses(expected: Iterable[S | str] | S | str) -> frozenset[S]:
    """Normalise a status or a set of statuses (as given to `set_status`)."""
    if isinstance(expected, str):
        return frozenset({S(expected)})
    return frozenset(S(e) for e in expected)


def check(expected: Iterable[S | str] | S | str, new: S | str) -> frozenset[S]:
    """The expected statuses, after checking each may move to `new` (a bug otherwise)."""
    statuses = expected_statuses(expected)
    illegal = sorted(s.value for s in statuses if not can(s, new))
    if illegal or not statuses:
        raise ValueError(f"no transition {illegal or '∅'} → {S(new).value} in the lifecycle table")
    return statuses


def refuse(action: str, current: S | str) -> Conflict:
    """The 409 for an action the sandbox's current status does not allow."""
    return Conflict(f"a {S(current).value} sandbox cannot be {action}")
