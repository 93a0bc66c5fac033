"""The composition root: opens every service, builds `Deps`, serves, and shuts down by deadline."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from agentserver.api.app import create_app
from agentserver.api.oidc import sign_in_providers
from agentserver.api.revocation import follow_revocations
from agentserver.audit.writer import DatabaseStore, open_audit_log
from agentserver.auth.tickets import AccessCache
from agentserver.banner import startup_lines
from agentserver.cluster import open_cluster
from agentserver.db.database import Database, check_connect, open_database
from agentserver.db.embedded import open_embedded_postgres
from agentserver.db.migrate import apply_migrations
from agentserver.deps import Deps
from agentserver.errors import ConfigError, DatabaseUnavailable
from agentserver.llm.proxy import LlmProxy, is_llm_request, llm_middleware, open_llm_proxy
from agentserver.llm.upstream_httpx import open_upstream
from agentserver.proxy import front
from agentserver.proxy.subdomain import SubdomainProxy, open_pool
from agentserver.sandboxes.event_relay import open_workspace_events
from agentserver.sandboxes.feature import open_sandboxes
from agentserver.sandboxes.tunnel_session import open_tunnel_sessions
from agentserver.settings import OPTION_BY_NAME, Settings

log = logging.getLogger(__name__)
# Marking this replica draining in its presence row: bounded, the database may be the reason
# the replica stops (the row then just says so at its next heartbeat, or ages out).
DRAIN_MARK_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Running:
    """What `run` reports once it listens."""

    url: str
    port: int
    deps: Deps
    # The front door's subdomain proxy (sandbox hosts), around the LLM proxy and the API app.
    proxy: SubdomainProxy
    # One line for the operator: what runs sandboxes, and how isolated.
    sandbox_summary: str
    # The LLM proxy (its usage recorder, and the stage timings the benchmark reads).
    llm: LlmProxy


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


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[tuple[Deps, str]]:
    """Every service the handlers share, opened in order and closed in reverse: the database,
    this replica's place in the cluster (its leadership runs once-only work), the audit log,
    sign-in providers, the sandbox lifecycle over its backend, and the local
    agents' tunnel sessions with their hub. Yields the handlers' `Deps` and the backend's
    one-line summary. (The proxies' own clients are opened by `run` and handed to them.)

    The audit log closes after everything that records into it (requests, which `run` drains
    first, the lifecycle's loops, the tunnels) and before the database: what they recorded is
    stored on a clean shutdown."""
    async with (
        open_db(settings) as db,
        # This replica's row and heartbeat: other replicas find it (and its relay) there.
        open_cluster(settings, db) as cluster,
        open_audit_log(
            DatabaseStore(db),
            settings.audit_retention_days,
            once_in_cluster=cluster.leader.while_leading,
        ) as audit,
    ):
        # A half-configured provider stops the start here, before any other service opens.
        oidc_providers = await sign_in_providers(settings)
        async with (
            # Fed with every replica's changes (LISTEN/NOTIFY): any replica serves any stream.
            open_workspace_events(db) as events,
            open_sandboxes(settings, db, events, audit, cluster) as lifecycle,
            open_tunnel_sessions(
                settings, db, lifecycle.service, audit, cluster=cluster
            ) as tunnels,
        ):
            deps = Deps(
                settings=settings,
                db=db,
                events=events,
                sandboxes=lifecycle.service,
                idle_watcher=lifecycle.idle_watcher,
                reconciler=lifecycle.reconciler,
                hub=tunnels.hub,
                tunnels=tunnels,
                access=AccessCache(db),
                oidc_providers=oidc_providers,
                audit=audit,
                cluster=cluster,
                server_warnings=lifecycle.warnings,
            )
            # Access ended on another replica ends here too (api/revocation.py).
            follow_revocations(deps)
            yield deps, lifecycle.summary


async def migrate_only(settings: Settings) -> list[str]:
    """Apply pending migrations and return their names (`agentserver db migrate`)."""
    async with open_database_url(settings) as url:
        return await trio.to_thread.run_sync(apply_migrations, url)


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.accesslog = None  # our own request log never prints query strings
    config.errorlog = None  # serve prints its own "listening" line once ready
    config.graceful_timeout = settings.shutdown_grace  # the drain's deadline (proxy/front.py)
    config.keep_alive_timeout = settings.keep_alive_timeout  # both paths (proxy/front.py)
    config.websocket_ping_interval = 20
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def begin_drain(deps: Deps) -> None:
    """The start of a graceful shutdown, in this order: not ready (`/readyz` 503) and no new
    tunnels (both read the presence's `draining`, set before anything is awaited); the
    dashboards' event streams end, so browsers reconnect to another replica instead of holding
    this one for the whole grace period; the presence row says draining; every agent gets the
    go-away and connects again at once (through the balancer, to another replica) while its
    requests in flight finish on the old tunnel (`Hub.move_all`). Requests in flight keep
    running: the listener drains them by the deadline (proxy/front.py)."""
    presence = deps.cluster.presence
    presence.draining = True
    deps.events.close_all()
    # The row says draining before any tunnel is sent away: a replica relaying here that is
    # told "stale" then reads that this one drains, and waits for the agent's new tunnel.
    with trio.move_on_after(DRAIN_MARK_TIMEOUT):
        try:
            await presence.drain()
        except Exception:  # the row then says so at the next heartbeat, or ages out
            log.warning("could not mark this replica draining in the database", exc_info=True)
    agents = deps.hub.move_all()
    await trio.lowlevel.checkpoint()
    log.info(
        "draining: not ready, taking no new tunnels, %d agent(s) asked to reconnect elsewhere;"
        " requests in flight have %s s",
        agents,
        deps.settings.shutdown_grace,
    )


async def run(
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set, then drain (`begin_drain`, and requests in flight by
    `settings.shutdown_grace`) and stop everything."""
    sock = bind(settings)
    settings = settings.with_port(sock.getsockname()[1])
    with sock:  # closed even when the database or a service fails to open
        async with (
            open_services(settings) as (deps, sandbox_summary),
            # The LLM proxy's client to the Anthropic API.
            open_upstream(settings.anthropic_base_url) as llm_client,
            # Closed after serving stops and before the database: its usage rows drain first.
            open_llm_proxy(deps, llm_client) as llm,
            open_pool(settings) as pool,  # the subdomain proxy's, to sandboxes' agents
        ):
            # Sandbox hosts go to the subdomain proxy, /proxy/anthropic/* on the main host to
            # the LLM proxy (the front door serves both itself when a request is plain HTTP/1.1,
            # hypercorn otherwise), the rest to the API.
            # (quart, hypercorn and our proxies each type ASGI their own way: one protocol.)
            api: Any = create_app(deps)
            proxy = SubdomainProxy(llm_middleware(api, llm), deps, pool)
            llm_site = front.MainSite(is_llm_request, llm.handle)
            config = hypercorn_config(settings)
            asgi = wrap_app(cast(Any, proxy), config.wsgi_max_body_size, "asgi")
            # Everything built so far lives as long as the server: keep the collector's
            # full passes from walking it again and again under load.
            gc.freeze()
            # Serving has its own nursery: once `shutdown` is set it drains requests (up to
            # --shutdown-grace) and returns, and only then do the services and the database close.
            async with trio.open_nursery() as http:
                await http.start(
                    partial(
                        front.serve,
                        asgi,
                        config,
                        sock,
                        proxy,
                        main_site=llm_site,
                        shutdown_trigger=shutdown.wait,
                        max_connections=settings.max_connections,
                    )
                )
                loopback = ("127.0.0.1", "0.0.0.0", "::")
                host = "localhost" if settings.listen_host in loopback else settings.listen_host
                url = f"http://{host}:{settings.listen_port}"
                task_status.started(
                    Running(url, settings.listen_port, deps, proxy, sandbox_summary, llm)
                )
                await shutdown.wait()
                await begin_drain(deps)


async def main(settings: Settings) -> None:
    """Run with signal handling: SIGINT/SIGTERM start a graceful shutdown (a drain)."""
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
            lines = startup_lines(running.deps.settings, running.url, running.sandbox_summary)
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
