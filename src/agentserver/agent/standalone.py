"""The entry point of the agent-only single file (`agentserver-agent.pyz`, agent_bundle.py):
`agent connect` as in the full command, and `--version`; nothing of the server."""

from __future__ import annotations

import cyclopts

from agentserver import __version__
from agentserver.agent import cli as agent_cli

app = cyclopts.App(
    name="agentserver-agent",
    help="Connect a local opencode to an agentserver (the agent alone, without the server).",
    version=__version__,
)
app.command(agent_cli.app)


def main() -> None:
    app()


if __name__ == "__main__":  # the entry PyInstaller freezes (nox -s agent)
    main()
