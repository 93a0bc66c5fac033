"""The root nursery: database, features, hypercorn, signals and graceful shutdown."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from agentserver.api import sandbox_open
from agentserver.api import sandboxes as sandboxes_api
from agentserver.api.agents import open_tunnel
from agentserver.api.app import create_app
from agentserver.api.oidc import open_oidc
from agentserver.api.usage import open_usage_api
from agentserver.banner import startup_lines
from agentserver.db.database import Database, check_connect, open_database
from agentserver.db.embedded import open_embedded_postgres
from agentserver.db.migrate import apply_migrations
from agentserver.deps import Deps
from agentserver.errors import ConfigError, DatabaseUnavailable
from agentserver.proxy import front
from agentserver.proxy.llm import llm_middleware, open_llm_proxy
from agentserver.proxy.subdomain import SubdomainProxy, open_proxy
from agentserver.proxy.tunnel_upstream import open_tunnel_upstreams
from agentserver.sandboxes.feature import open_sandboxes
from agentserver.settings import OPTION_BY_NAME, Settings

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 5.0

# Features that own services of their own (sandboxes, tunnel hub, LLM proxy, OIDC) add an
# opener here: an async context manager taking Deps, entered in order, exited in reverse.
Feature = Callable[[Deps], AbstractAsyncContextManager[None]]
FEATURES: list[Feature] = []
FEATURES.append(open_oidc)  # sign in with GitHub / OIDC
# ASGI wrappers applied around the API app, innermost first (e.g. the subdomain proxy).
Middleware = Callable[[Any, Deps], Any]
MIDDLEWARE: list[Middleware] = []
FEATURES += [open_usage_api, open_llm_proxy]
MIDDLEWARE.append(llm_middleware)
# The subdomain proxy: /api/sandboxes/{id}/open, its upstream pool, and Host dispatch (outermost).
FEATURES += [sandbox_open.register, open_proxy]
MIDDLEWARE.append(SubdomainProxy)
# Sandboxes: the lifecycle service (backend, reconciliation, idle watcher) and its routes.
FEATURES += [open_sandboxes, sandboxes_api.register]
# Local agents: codes, registration, the tunnel endpoint and hub; tunnels as proxy upstreams
# (after the sandboxes service, which it tells about running/offline).
FEATURES += [open_tunnel, open_tunnel_upstreams]


@dataclass(frozen=True, slots=True)
class Running:
    """What `run` reports once it listens."""

    url: str
    port: int
    deps: Deps


def bind(settings: Settings) -> socket.socket:
    """The listening socket, made before anything else so a busy port fails at once."""
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.listen_host, settings.listen_port))
    except OSError as exc:
        sock.close()
        where = f"{settings.listen_host}:{settings.listen_port}"
        reason = (
            "is already in use"
            if exc.errno == errno.EADDRINUSE
            else f"cannot be bound ({exc.strerror})"
        )
        raise ConfigError(f"--listen / AGENTSERVER_LISTEN: {where} {reason}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def open_database_url(settings: Settings) -> AsyncIterator[str]:
    """The database URL: the given one (checked first) or an embedded PostgreSQL's."""
    if settings.db_url:
        try:
            await trio.to_thread.run_sync(check_connect, settings.db_url)
        except DatabaseUnavailable as exc:
            raise ConfigError(f"--db-url / DATABASE_URL: {exc.message}") from None
        yield settings.db_url
    else:
        async with open_embedded_postgres(settings.data_dir) as url:
            yield url


@asynccontextmanager
async def open_db(settings: Settings) -> AsyncIterator[Database]:
    """The database, migrated before use."""
    async with open_database_url(settings) as url:
        await trio.to_thread.run_sync(apply_migrations, url)
        async with open_database(url) as db:
            yield db


async def migrate_only(settings: Settings) -> list[str]:
    """Apply pending migrations and return their names (`agentserver db migrate`)."""
    async with open_database_url(settings) as url:
        return await trio.to_thread.run_sync(apply_migrations, url)


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.accesslog = None  # our own request log never prints query strings
    config.errorlog = None  # serve prints its own "listening" line once ready
    config.graceful_timeout = SHUTDOWN_GRACE
    config.keep_alive_timeout = settings.keep_alive_timeout  # both paths (proxy/front.py)
    config.websocket_ping_interval = 20
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def run(
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set, then drain requests by a deadline and stop everything."""
    sock = bind(settings)
    settings = settings.with_port(sock.getsockname()[1])
    with sock:  # closed even when the database or a feature fails to open
        async with open_db(settings) as db, trio.open_nursery() as nursery:
            deps = Deps(settings=settings, db=db, nursery=nursery)
            async with AsyncExitStack() as features:
                for feature in FEATURES:
                    await features.enter_async_context(feature(deps))
                app: Any = create_app(deps)
                for middleware in MIDDLEWARE:
                    app = middleware(app, deps)
                config = hypercorn_config(settings)
                asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
                # Sandbox-host requests take the proxy's fast path, the rest hypercorn.
                fast = app if isinstance(app, SubdomainProxy) else None
                # Everything built so far lives as long as the server: keep the collector's
                # full passes from walking it again and again under load.
                gc.freeze()
                # Serving has its own nursery: once `shutdown` is set it drains requests (up to
                # graceful_timeout) and returns, and only then do features and the database close.
                async with trio.open_nursery() as http:
                    await http.start(
                        partial(
                            front.serve,
                            asgi,
                            config,
                            sock,
                            fast,
                            shutdown_trigger=shutdown.wait,
                            max_connections=settings.max_connections,
                        )
                    )
                    loopback = ("127.0.0.1", "0.0.0.0", "::")
                    host = "localhost" if settings.listen_host in loopback else settings.listen_host
                    url = f"http://{host}:{settings.listen_port}"
                    task_status.started(Running(url=url, port=settings.listen_port, deps=deps))
                # Features stop their own tasks on exit; anything left in the nursery is cancelled.
            nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE


async def main(settings: Settings) -> None:
    """Run with signal handling: SIGINT/SIGTERM start a graceful shutdown."""
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    shutdown.set()
                    return

            nursery.start_soon(watch)
            running: Running = await nursery.start(partial(run, settings, shutdown=shutdown))
            sandboxes = str(running.deps.extras.get("sandbox_summary", settings.backend))
            lines = startup_lines(running.deps.settings, running.url, sandboxes)
            print("\n".join(lines), flush=True)
            for flag in settings.secret_flags:
                env = OPTION_BY_NAME[flag[2:].replace("-", "_")].env
                log.warning(
                    "%s was given on the command line, where every local user can read it;"
                    " use %s or %s_FILE instead",
                    flag,
                    env,
                    env,
                )
            await shutdown.wait()
        log.info("stopped")
