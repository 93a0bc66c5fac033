"""agentserver: run the opencode coding agent for a team, from a browser."""

__version__ = "0.1.0"
