"""The tunnel protocol number an agent sends and a server checks."""

from __future__ import annotations

from agentserver.tunnel.version import PROTOCOL, mismatch, spoken


def test_an_agent_without_the_header_speaks_protocol_one() -> None:
    assert spoken(None) == 1


def test_a_number_is_read_and_anything_else_is_unreadable() -> None:
    assert spoken(" 2 ") == 2
    assert spoken("two") is None
    assert spoken("-1") is None
    assert spoken("9" * 50) is None


def test_the_mismatch_message_names_both_sides_and_the_download() -> None:
    text = mismatch(PROTOCOL + 1, "9.9.9", PROTOCOL, "0.1.0")
    assert f"tunnel protocol {PROTOCOL + 1}" in text
    assert "agentserver 0.1.0" in text
    assert "/download/agentserver-agent.pyz" in text
