"""The `agentserver agent` commands (cyclopts sub-app): `connect`."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated

import cyclopts
from cyclopts import Parameter

from agentserver.agent import connect as agent
from agentserver.agent import heap

app = cyclopts.App(name="agent", help="Connect a local opencode to an agentserver.", backend="trio")


def say(line: str) -> None:
    """One status line per state change, with the time, on stdout."""
    print(f"{datetime.now():%H:%M:%S} agent: {line}", flush=True)


@app.command
async def connect(
    *,
    server: Annotated[
        str | None,
        Parameter(
            name="--server",
            help="Server URL, e.g. https://cli.example.com; needed to register, "
            "overrides the saved one.",
        ),
    ] = None,
    code: Annotated[
        str | None,
        Parameter(
            name="--code",
            help="One-time registration code from "
            "the web UI; registers anew even if credentials are saved.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        Parameter(name="--name", help="Display name; default: this machine's host name."),
    ] = None,
    opencode_url: Annotated[
        str, Parameter(name="--opencode-url", help="Where the local opencode listens.")
    ] = agent.DEFAULT_OPENCODE_URL,
    config: Annotated[
        str, Parameter(name="--config", help="Where credentials are saved (mode 0600).")
    ] = agent.DEFAULT_CONFIG,
    opencode_password: Annotated[
        str | None,
        Parameter(
            name="--opencode-password",
            help="The local opencode's server password "
            "(OPENCODE_SERVER_PASSWORD), sent as HTTP Basic credentials for user opencode.",
        ),
    ] = None,
    allow_port: Annotated[
        list[int] | None,
        Parameter(
            name="--allow-port",
            help="Share this local port as a preview (repeatable, 1024-65535); saved with the "
            "credentials and used on later runs. Requests for any other port are refused.",
            negative="",
        ),
    ] = None,
) -> None:
    """Register this machine (first run, with --code) and keep its tunnel to the server up."""
    heap.keep_large_buffers()  # a body's pieces reuse the heap's memory (agent/heap.py)
    status = await agent.connect(
        server=server,
        code=code,
        name=name,
        opencode_url=opencode_url,
        config_path=config,
        opencode_password=opencode_password,
        allow_ports=allow_port,
        say=say,
        handle_signals=True,
    )
    sys.stdout.flush()
    if status:
        raise SystemExit(status)
