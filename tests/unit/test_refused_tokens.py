"""The brief memory of refused sandbox cookies (pure)."""

from __future__ import annotations

from agentserver.proxy.refused_tokens import RefusedTokens


def test_a_refusal_is_remembered_only_for_its_time() -> None:
    """A refused token reads as refused until its time is up, then is asked about again."""
    refused = RefusedTokens(seconds=5.0)
    refused.remember(("sbx", "hash"), now=100.0)
    assert refused.refused(("sbx", "hash"), now=104.9)
    assert not refused.refused(("sbx", "hash"), now=105.0)
    assert len(refused) == 0


def test_the_memory_is_bounded_and_forgets_the_oldest_refusal() -> None:
    """Past its size the least recently refused pair is forgotten, so a flood of distinct
    tokens cannot grow it."""
    refused = RefusedTokens(seconds=5.0, size=3)
    for n in range(5):
        refused.remember(("sbx", f"h{n}"), now=0.0)
    assert len(refused) == 3
    assert not refused.refused(("sbx", "h0"), now=1.0)
    assert refused.refused(("sbx", "h4"), now=1.0)
