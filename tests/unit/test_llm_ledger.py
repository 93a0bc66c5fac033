"""The LLM proxy's in-memory admission: the ledger, the caller cache and change notices (pure)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agentserver.db.notify import Changes, Notice, notice_of
from agentserver.llm.callers import CallerCache
from agentserver.llm.ledger import STALE_AFTER, Ledger
from agentserver.llm.rules import Caller, Refusal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def load(tokens: int = 0, requests: int = 0, frees_in: int = 0) -> dict[str, Any]:
    return {
        "recent_requests": requests,
        "window_frees_in": frees_in,
        "tokens_today": tokens,
        "day_ends_in": 3600,
    }


def ledger_with(snapshot: dict[str, Any]) -> tuple[Ledger, Clock]:
    clock = Clock()
    ledger = Ledger(clock)
    ledger.install("w", snapshot, clock(), ledger.generation)
    return ledger, clock


def test_a_workspace_without_a_fresh_snapshot_needs_a_load() -> None:
    """Admission reads the database for an unknown workspace and for a stale snapshot only."""
    ledger, clock = ledger_with(load())
    assert ledger.needs_load("other")
    assert not ledger.needs_load("w")
    clock.now += STALE_AFTER + 1
    assert ledger.needs_load("w")


def test_reservations_count_until_the_quota_is_reached() -> None:
    """Calls in flight hold their reservation: the next call is refused once they reach it."""
    ledger, _ = ledger_with(load(tokens=10))
    ledger.admit("w", 0, 150, reserved=94, incoming=30)  # 10 used: fits
    ledger.admit("w", 0, 150, reserved=94, incoming=30)  # 104 held: 134 ≤ 150 fits
    with pytest.raises(Refusal) as refused:
        ledger.admit("w", 0, 150, reserved=94, incoming=30)  # 198 held
    assert (refused.value.status, refused.value.reason) == (429, "quota_reached")


def test_a_settled_call_holds_what_it_used() -> None:
    """A finished call counts its real usage instead of its reservation until written."""
    ledger, _ = ledger_with(load())
    ticket = ledger.admit("w", 0, 100, reserved=90, incoming=0)
    with pytest.raises(Refusal):
        ledger.admit("w", 0, 100, reserved=90, incoming=20)
    ledger.settle(ticket, 5)
    ledger.admit("w", 0, 100, reserved=90, incoming=20)
    assert ledger.load("w")["tokens_today"] == 95


def test_a_sync_replaces_written_tickets_by_the_snapshot() -> None:
    """After a sync a written call is counted once, by the snapshot, never twice or not at all."""
    ledger, clock = ledger_with(load())
    written = ledger.admit("w", 0, 1000, reserved=50, incoming=0)
    ledger.settle(written, 40)
    open_call = ledger.admit("w", 0, 1000, reserved=70, incoming=0)
    assert ledger.held_in_flight("w", [written]) == (70, 1)
    ledger.synced([written], {"w": load(tokens=40, requests=1)}, clock())
    assert ledger.load("w")["tokens_today"] == 40 + open_call.reserved
    assert ledger.load("w")["recent_requests"] == 2


def test_a_snapshot_read_before_a_sync_is_dropped() -> None:
    """A load admission read while a sync landed would miss the sync's rows: it is not kept."""
    ledger, clock = ledger_with(load(tokens=1))
    generation = ledger.generation
    ledger.synced([], {"w": load(tokens=7)}, clock())
    ledger.install("w", load(tokens=0), clock(), generation)
    assert ledger.load("w")["tokens_today"] == 7


def test_requests_per_minute_count_local_calls_and_say_when_to_retry() -> None:
    """The per-minute limit counts local calls at once; Retry-After is when one ages out."""
    ledger, clock = ledger_with(load(requests=1, frees_in=50))
    ledger.admit("w", 2, 0, reserved=0, incoming=0)
    clock.now += 20
    with pytest.raises(Refusal) as refused:
        ledger.admit("w", 2, 0, reserved=0, incoming=0)
    assert refused.value.reason == "rate_limited"
    assert refused.value.retry_after == 30  # the snapshot's oldest frees 50 s after it was read


def test_idle_accounts_are_forgotten() -> None:
    """A workspace with nothing in flight and no calls for a minute is no longer synced."""
    ledger, clock = ledger_with(load())
    ticket = ledger.admit("w", 0, 100, reserved=10, incoming=0)
    clock.now += 120
    assert ledger.tracked() == ["w"]  # it still holds a call
    ledger.synced([ticket], {}, clock())
    assert ledger.tracked() == []


CALLER = Caller("s1", "w1", None, "box", "running")


def test_callers_are_forgotten_by_sandbox_and_by_workspace() -> None:
    """A notice naming a sandbox or a workspace drops exactly its tokens."""
    cache = CallerCache()
    other = Caller("s2", "w2", None, "box2", "running")
    cache.put("a", CALLER)
    cache.put("b", other)
    cache.forget_sandbox("s1")
    assert (cache.get("a"), cache.get("b")) == (None, other)
    assert cache.former("a") == CALLER
    cache.forget_workspace("w2")
    assert cache.get("b") is None


def test_a_lookup_that_raced_a_notice_is_not_kept() -> None:
    """An answer read before a notice arrived may be stale, so `put` ignores it."""
    cache = CallerCache()
    epoch = cache.epoch
    cache.forget_sandbox("s1")  # a notice lands while the look-up is in flight
    cache.put("a", CALLER, epoch)
    assert cache.get("a") is None
    cache.put("a", CALLER, cache.epoch)
    assert cache.get("a") == CALLER


def test_nothing_is_served_while_notices_do_not_flow() -> None:
    """Without a live listener the cache neither keeps nor serves entries."""
    live = [False]
    cache = CallerCache(live=lambda: live[0])
    cache.put("a", CALLER)
    live[0] = True
    assert cache.get("a") is None
    cache.put("a", CALLER)
    live[0] = False
    assert cache.get("a") is None


class Probe:
    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self.resets = 0

    def notice(self, notice: Notice) -> None:
        self.notices.append(notice)

    def reset(self) -> None:
        self.resets += 1


def test_changes_reach_each_subscriber_of_their_channel() -> None:
    """Several subscribers per channel; a reset (a gap) reaches every subscriber once."""
    changes = Changes()
    first, second, elsewhere = Probe(), Probe(), Probe()
    changes.subscribe("sandbox_changed", first)
    changes.subscribe("sandbox_changed", second)
    changes.subscribe("llm_quota_changed", elsewhere)
    changes.subscribe("other", elsewhere)
    changes.publish(Notice("sandbox_changed", "s1"))
    assert first.notices == second.notices == [Notice("sandbox_changed", "s1")]
    assert elsewhere.notices == []
    changes.set_live(False)
    assert (first.resets, second.resets, elsewhere.resets) == (1, 1, 1)
    changes.unsubscribe("sandbox_changed", first)
    changes.publish(Notice("sandbox_changed", "s2"))
    assert len(first.notices) == 1


def test_only_change_notices_are_read_from_server_notices() -> None:
    """A trigger's NOTICE becomes a change; any other server notice is ignored."""
    ours = SimpleNamespace(
        message_primary="agentserver change", message_detail="sandbox_changed", message_hint="s1"
    )
    other = SimpleNamespace(message_primary="relation exists", message_detail=None)
    assert notice_of(ours) == Notice("sandbox_changed", "s1")
    assert notice_of(other) is None
