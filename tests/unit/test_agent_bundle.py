"""What goes into the agent file: the agent's own modules and dependencies, nothing else."""

from __future__ import annotations

import importlib.metadata
import re

from packaging.requirements import Requirement

from agentserver import agent_bundle


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_distributions_are_the_closure_of_the_agents_requirements() -> None:
    """A new dependency of trio, httpx, trio-websocket or cyclopts must be listed, and nothing
    they do not need is carried along."""
    closure: set[str] = set()
    todo = list(agent_bundle.ROOTS)
    while todo:
        name = canonical(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    assert {canonical(n) for n in agent_bundle.DISTRIBUTIONS} == closure


def test_the_agent_modules_hold_no_server_side() -> None:
    modules = agent_bundle.agent_modules()
    assert "agentserver.agent.connect" in modules
    assert "agentserver.tunnel.transport" in modules
    server_side = ("api", "db", "sandboxes", "serve", "proxy", "llm", "auth", "settings", "cli")
    assert not [m for m in modules if m.split(".")[1:2] and m.split(".")[1] in server_side]


def test_relative_imports_are_followed() -> None:
    """`from .frames import x` inside a package resolves to that package's module."""
    modules = agent_bundle.agent_modules()
    # tunnel/__init__.py imports its parts relatively.
    assert "agentserver.tunnel.frames" in modules
    assert "agentserver.tunnel.links" in modules
