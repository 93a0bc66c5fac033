"""Two trees' tunnels at the same moment: which one adds less, on a machine whose noise moves
every run by more than the difference.

Run: `python bench/compare_tunnel.py BASE_SRC NEW_SRC [--requests N] [--runs N]`, where each
`*_SRC` is a tree's `src` folder (e.g. a `git worktree` of the base commit). Per run: one
upstream of our own (tests/support/bulk_upstream.py) in this process, and for each tree a real
`agentserver serve` (embedded PostgreSQL) with a real `agentserver agent connect` forwarding to
it. Small requests alternate direct, base, direct, new, ...; then 60 SSE events each way, five
times. So both trees meet the same moment of the machine, which a benchmark run after another
cannot give. Prints what each tree adds over direct (medians, p90), and the difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tunnel as bt


async def start_tree(
    src: str, upstream: str, work: Path, nursery: trio.Nursery
) -> tuple[httpx.AsyncClient, list[trio.Process], httpx.AsyncClient]:
    """A server and an agent of the tree at `src`; a browser on the agent's sandbox."""
    env = {"PYTHONPATH": src}
    server_proc, line = await bt.spawn(
        [
            *(bt.PYTHON, "-m", "agentserver.cli", "serve", "--listen", "127.0.0.1:0"),
            *("--data-dir", str(work / "data"), "--idle-timeout", "0"),
        ],
        "listening on",
        env={**env, "AGENTSERVER_LOG_LEVEL": "WARNING"},
    )
    nursery.start_soon(bt.drain, server_proc)
    server = line.rsplit(" ", 1)[1].strip().replace("localhost", "127.0.0.1")
    port = int(server.rsplit(":", 1)[1])
    owner, workspace_id = await bt.sign_up(server)
    agent_proc, _ = await bt.spawn(
        [
            *(bt.PYTHON, "-m", "agentserver.cli", "agent", "connect", "--server", server),
            *("--code", await bt.new_code(owner, workspace_id)),
            *("--config", str(work / "agent.json"), "--opencode-url", upstream),
            *("--name", "bench"),
        ],
        "connected:",
        env=env,
    )
    nursery.start_soon(bt.drain, agent_proc)
    sandbox_id = (work / "agent.json").read_text().split('"sandboxId": "')[1].split('"')[0]
    browser = await bt.browser(server, port, owner, sandbox_id)
    return browser, [server_proc, agent_proc], owner


def p90(values: list[float]) -> float:
    return sorted(values)[len(values) * 9 // 10]


async def one_run(trees: dict[str, str], requests: int) -> dict[str, tuple[float, float]]:
    """Each tree's (small request added, SSE event added), medians in ms."""
    results: dict[str, tuple[float, float]] = {}
    async with trio.open_nursery() as nursery:
        up = await nursery.start(bt.serve_bulk, bt.BulkUpstream(arrivals=[]))
        upstream = f"http://127.0.0.1:{up.port}"
        browsers: dict[str, httpx.AsyncClient] = {}
        owners, procs = [], []
        for name, src in trees.items():
            work = Path(tempfile.mkdtemp(prefix=f"agentserver-compare-{name}-", dir="/tmp"))
            browsers[name], started, owner = await start_tree(src, upstream, work, nursery)
            procs += started
            owners.append(owner)
        direct = httpx.AsyncClient(base_url=upstream, timeout=60)
        for _ in range(50):  # warm up every path
            for client in (direct, *browsers.values()):
                await bt.small(client)
        small: dict[str, list[float]] = {name: [] for name in trees}
        sse: dict[str, list[float]] = {name: [] for name in trees}
        direct_small: list[float] = []
        direct_sse: list[float] = []
        for _ in range(5):
            for _ in range(requests // 5):
                for name, client in browsers.items():
                    direct_small.append(await bt.small(direct) * 1000)
                    small[name].append(await bt.small(client) * 1000)
            direct_sse += [x * 1000 for x in await bt.sse_delays(direct, 60)]
            for name, client in browsers.items():
                sse[name] += [x * 1000 for x in await bt.sse_delays(client, 60)]
        ds, de = statistics.median(direct_small), statistics.median(direct_sse)
        for name in trees:
            added = statistics.median(small[name]) - ds, statistics.median(sse[name]) - de
            results[name] = added
            print(
                f"  {name}: small request +{added[0]:.3f} ms (p90 +{p90(small[name]) - ds:.3f}), "
                f"SSE event +{added[1]:.3f} ms (p90 +{p90(sse[name]) - de:.3f})"
            )
        print(f"  direct: small request {ds:.3f} ms, SSE event {de:.3f} ms")
        for client in (direct, *browsers.values(), *owners):
            await client.aclose()
        for proc in procs:
            proc.terminate()
        with trio.move_on_after(30):
            for proc in procs:
                await proc.wait()
        nursery.cancel_scope.cancel()
    return results


async def compare(args: argparse.Namespace) -> None:
    trees = {"base": args.base, "new": args.new}
    runs = []
    for run in range(args.runs):
        print(f"run {run + 1}")
        runs.append(await one_run(trees, args.requests))
    for index, metric in enumerate(("small request", "SSE event")):
        deltas = [r["new"][index] - r["base"][index] for r in runs]
        better = sum(d < 0 for d in deltas)
        print(
            f"{metric}: new minus base per run "
            + ", ".join(f"{d:+.3f}" for d in deltas)
            + f" ms; new lower in {better} of {len(deltas)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base", help="the base tree's src folder")
    parser.add_argument("new", help="the new tree's src folder")
    parser.add_argument("--requests", type=int, default=1000, help="small requests per tree")
    parser.add_argument("--runs", type=int, default=5)
    trio.run(compare, parser.parse_args())


if __name__ == "__main__":
    main()
