"""The sandbox state machine table: exactly the allowed transitions, and the checks built on it."""

from __future__ import annotations

import pytest

from agentserver.errors import Conflict
from agentserver.models import SandboxStatus as S
from agentserver.sandboxes import lifecycle

ALLOWED = {
    (S.CREATING, S.RUNNING),
    (S.CREATING, S.FAILED),
    (S.RUNNING, S.PAUSING),
    (S.RUNNING, S.RESUMING),
    (S.RUNNING, S.OFFLINE),
    (S.RUNNING, S.FAILED),
    (S.PAUSING, S.PAUSED),
    (S.PAUSING, S.FAILED),
    (S.PAUSED, S.RESUMING),
    (S.RESUMING, S.RUNNING),
    (S.RESUMING, S.FAILED),
    (S.OFFLINE, S.RUNNING),
    (S.FAILED, S.RESUMING),
}
PAIRS = [(a, b) for a in S for b in S]


@pytest.mark.parametrize(("current", "new"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_can_matches_the_declared_table(current: S, new: S) -> None:
    """`can` allows exactly the transitions of the specification and refuses every other pair."""
    assert lifecycle.can(current, new) is ((current, new) in ALLOWED)


def test_every_status_has_a_row() -> None:
    """Each status appears in the table, so no status is a dead end by omission."""
    assert set(lifecycle.TRANSITIONS) == set(S)


def test_no_status_moves_to_itself() -> None:
    """A transition always changes the status (a self-loop would publish no real change)."""
    assert not any(lifecycle.can(s, s) for s in S)


def test_paused_can_only_resume() -> None:
    """A paused sandbox never jumps straight to running: it must pass through resuming."""
    assert {n for n in S if lifecycle.can(S.PAUSED, n)} == {S.RESUMING}


def test_check_accepts_legal_expected_sets_as_strings() -> None:
    """`check` normalises a single status or a set of status strings."""
    assert lifecycle.check("running", "pausing") == {S.RUNNING}
    assert lifecycle.check({"creating", "resuming"}, S.RUNNING) == {S.CREATING, S.RESUMING}


@pytest.mark.parametrize(
    ("expected", "new"),
    [
        ({"paused"}, "running"),
        ({"running", "paused"}, "pausing"),
        (set(), "running"),
    ],
)
def test_check_refuses_an_illegal_transition(expected: set[str], new: str) -> None:
    """Asking for a transition the table lacks is a programming error, caught before any UPDATE."""
    with pytest.raises(ValueError, match="lifecycle table"):
        lifecycle.check(expected, new)


def test_api_sets_are_consistent_with_the_table() -> None:
    """What the API pauses and resumes from may really move to pausing and resuming."""
    assert all(lifecycle.can(s, S.PAUSING) for s in lifecycle.PAUSABLE)
    assert all(lifecycle.can(s, S.RESUMING) for s in lifecycle.RESUMABLE)
    assert S.RUNNING not in lifecycle.RESUMABLE


def test_restart_moves_running_or_paused_to_resuming() -> None:
    """What the API restarts may really move to resuming, and nothing starting or failed is
    restarted (a failed one is resumed)."""
    assert frozenset({S.RUNNING, S.PAUSED}) == lifecycle.RESTARTABLE
    assert all(lifecycle.can(s, S.RESUMING) for s in lifecycle.RESTARTABLE)


def test_refuse_names_the_current_status() -> None:
    """The 409 for a refused action says which status stood in the way."""
    error = lifecycle.refuse("paused", "creating")
    assert isinstance(error, Conflict)
    assert error.message == "a creating sandbox cannot be paused"
