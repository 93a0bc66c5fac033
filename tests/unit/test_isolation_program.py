"""Bubblewrap shows a sandbox the agent's program folder, also when the clone's shell runs first."""

from __future__ import annotations

from pathlib import Path

from agentserver.sandboxes.isolation import Isolation
from agentserver.sandboxes.setup import program_of, with_clone

AGENT = "/srv/tools/node_modules/opencode-ai/bin/opencode"


def bound(argv: list[str]) -> list[str]:
    """The folders bwrap's argv binds read-only (source paths)."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--ro-bind"]


def test_the_program_of_a_wrapped_command_is_the_agent() -> None:
    plain = [AGENT, "serve", "--port", "4096"]
    wrapped, _ = with_clone(plain, {}, "https://example.com/team/app.git", None)
    assert wrapped[0] == "/bin/sh"
    assert program_of(wrapped) == AGENT
    assert program_of(plain) == AGENT


def test_bubblewrap_binds_the_agents_folder_behind_the_clone_shell(tmp_path: Path) -> None:
    plain = [AGENT, "serve"]
    wrapped, _ = with_clone(plain, {}, "https://example.com/team/app.git", None)
    isolation = Isolation("/usr/bin/bwrap")
    where = {"home": tmp_path / "home", "disk": tmp_path / "disk", "data_dir": tmp_path}
    assert "/srv/tools/node_modules" in bound(isolation.wrap(plain, **where))
    assert "/srv/tools/node_modules" in bound(isolation.wrap(wrapped, **where))
