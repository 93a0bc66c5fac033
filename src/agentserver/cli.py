"""The `agentserver` command line: serve, db migrate, agent connect, the client (login,
workspaces, sandboxes, tokens), --version."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import cyclopts
import trio
from cyclopts import Parameter

from agentserver import __version__, log_format
from agentserver.errors import AgentServerError
from agentserver.settings import OPTIONS, Option, Settings, build_settings

app = cyclopts.App(
    name="agentserver",
    help="Run the opencode coding agent for a team, from a browser.",
    version=__version__,
    backend="trio",
)
db_app = cyclopts.App(name="db", help="Database maintenance.")
app.command(db_app)

_BOOL_DEFAULTS = {"true", "false"}


def _fail(message: str) -> None:
    """One clear line on stderr and exit status 2: no traceback for bad input."""
    print(f"agentserver: {message}", file=sys.stderr)
    raise SystemExit(2)


def _parameter(option: Option) -> inspect.Parameter:
    default = "" if option.default is None else f"; default {option.default}"
    help_text = f"{option.help} [env {option.env}{default}]"
    kind: Any = bool | None if option.default in _BOOL_DEFAULTS else str | None
    annotation = Annotated[kind, Parameter(name=option.flag, help=help_text, show_default=False)]
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def _with_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give `fn(**values)` one keyword parameter per server option, for cyclopts to parse."""
    fn.__signature__ = inspect.Signature([_parameter(o) for o in OPTIONS])  # type: ignore[attr-defined]
    fn.__annotations__ = {o.name: _parameter(o).annotation for o in OPTIONS}
    return fn


def _first(group: BaseExceptionGroup[AgentServerError]) -> AgentServerError:
    """The first of our errors inside a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, AgentServerError)
    return exc


def settings_from(values: dict[str, Any]) -> Settings:
    text = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in values.items()}
    try:
        return build_settings(text, os.environ)
    except AgentServerError as exc:
        _fail(exc.message)
        raise  # unreachable


def _logging(settings: Settings) -> None:
    kind: log_format.Format = "json" if settings.log_format == "json" else "text"
    log_format.configure(kind, os.environ.get("AGENTSERVER_LOG_LEVEL", "INFO"))


@app.command
@_with_options
async def serve(**values: Any) -> None:
    """Run the server: API, web UI, sandbox proxy, tunnel endpoint and LLM proxy."""
    from agentserver import serve as server

    await trio.lowlevel.checkpoint()  # every exit, even a bad setting, passes a checkpoint
    settings = settings_from(values)
    _logging(settings)
    try:
        await server.main(settings)
    except* AgentServerError as group:
        _fail(_first(group).message)


@db_app.command
async def migrate(
    db_url: Annotated[
        str | None,
        Parameter(
            name="--db-url",
            help="PostgreSQL URL [env DATABASE_URL]; "
            "without it the embedded database in --data-dir is migrated.",
        ),
    ] = None,
    data_dir: Annotated[
        str | None,
        Parameter(
            name="--data-dir",
            help="Data directory of the embedded database [env AGENTSERVER_DATA_DIR].",
        ),
    ] = None,
) -> None:
    """Apply pending database migrations and exit."""
    from agentserver import serve as server

    await trio.lowlevel.checkpoint()  # every exit, even a bad setting, passes a checkpoint
    settings = settings_from({"db_url": db_url, "data_dir": data_dir})
    _logging(settings)
    applied: list[str] = []
    try:
        applied = await server.migrate_only(settings)
    except* AgentServerError as group:
        _fail(_first(group).message)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))


def _agent_app() -> Any:
    """The `agent` sub-command, when the agent feature is installed."""
    try:
        from agentserver.agent import cli as agent_cli
    except ImportError:  # the agent is another feature; serve works without it
        return None
    return agent_cli.app


def main() -> None:
    agent_app = _agent_app()
    if agent_app is not None and "agent" not in app:
        app.command(agent_app)
    if "login" not in app:
        from agentserver.client import commands as client

        client.install(app)
    app()


if __name__ == "__main__":
    main()
