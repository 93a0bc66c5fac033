"""Which tunnel protocol an agent and a server speak (pure).

The number changes when the frames on the wire change in a way the other side cannot read. An
agent sends its number in `HEADER` when it opens the tunnel; a server refuses a different one
with 426 and says which agent to get; an agent asks `/api/agent/install` first and stops with
that message itself. An agent that sends no number predates it: it speaks protocol 1.
"""

from __future__ import annotations

PROTOCOL = 1
HEADER = "X-Agentserver-Tunnel-Protocol"


def spoken(header: str | None) -> int | None:
    """The protocol a tunnel request's header names (1 when absent), None when unreadable."""
    if header is None:
        return 1
    text = header.strip()
    return int(text) if text.isdigit() and len(text) <= 6 else None


def mismatch(agent: int | None, agent_version: str, server: int, server_version: str) -> str:
    """What to tell the person at the laptop when the two sides cannot talk."""
    theirs = "an unknown tunnel protocol" if agent is None else f"tunnel protocol {agent}"
    return (
        f"this agent (agentserver {agent_version}, {theirs}) cannot connect to a server running"
        f" agentserver {server_version} (tunnel protocol {server}): get the matching agent from"
        " the server, e.g. `curl -fLO <server>/download/agentserver-agent.pyz`"
    )
