"""Local agent tunnel benchmark: through the tunnel vs direct to the same upstream, same run.

Run: `python bench/bench_tunnel.py [--rounds N] [--tunnels N]` (or `nox -s bench`).

Processes (all on this machine, sharing its cores): an opencode-like upstream of our own
(tests/support/bulk_upstream.py: bulk bytes, an upload sink, a tiny JSON, an SSE clock), a real
`agentserver serve` (embedded PostgreSQL), a real `agentserver agent connect` forwarding to the
upstream, and this process as the browser. "Direct" goes browser → upstream; "tunnel" goes
browser → server (subdomain proxy) → tunnel → agent → upstream; "floor" goes through two bare
trio forwarders (bench/bare_forwarder.py) to the upstream: two processes that only copy bytes,
the least two extra processes on the path cost on this machine. Then N idle tunnels are opened
from this process (cheap client tunnels, no forwarding) and the server's RSS growth per tunnel
is reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio
import trio_websocket

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.bulk_upstream import BulkUpstream, serve_bulk  # noqa: E402
from tests.support.sandbox_login import sandbox_cookie  # noqa: E402

from agentserver.agent.local_http import LocalClient  # noqa: E402
from agentserver.tunnel import Role, WebSocketLink, open_tunnel  # noqa: E402

MB = 1024 * 1024
PYTHON = sys.executable
PROCESSES = ("server", "agent")


async def spawn(
    argv: list[str], needle: str, env: dict[str, str] | None = None
) -> tuple[trio.Process, str]:
    """Start a child and return it with its first output line containing `needle`."""
    process = await trio.lowlevel.open_process(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(180):
        while True:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"{argv[:4]} ended before {needle!r}: {buffer.decode()}")
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if needle in line:
                    return process, line


async def drain(process: trio.Process) -> None:
    assert process.stdout is not None
    while await process.stdout.receive_some(65536):
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- probes -------------------------------------------------------------------------------------


async def download(client: httpx.AsyncClient, size: int) -> float:
    """MB/s for a `size`-byte download."""
    started, got = time.perf_counter(), 0
    async with client.stream("GET", f"/bytes?size={size}") as response:
        async for chunk in response.aiter_raw():
            got += len(chunk)
    assert got == size, got
    return size / MB / (time.perf_counter() - started)


async def upload(client: httpx.AsyncClient, size: int) -> float:
    """MB/s for a `size`-byte upload."""
    block = b"u" * MB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // MB):
            yield block

    started = time.perf_counter()
    response = await client.post(
        "/upload", content=body(), headers={"content-length": str(size // MB * MB)}
    )
    assert response.json()["size"] == size // MB * MB, response.text
    return size / MB / (time.perf_counter() - started)


async def small(client: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    response = await client.get("/small")
    assert response.status_code == 200
    return time.perf_counter() - started


async def small_legs(client: httpx.AsyncClient, arrivals: list[int]) -> tuple[float, float]:
    """Milliseconds of one small request: to the upstream's arrival stamp, and back from it."""
    seen = len(arrivals)
    started = time.perf_counter_ns()
    response = await client.get("/small")
    ended = time.perf_counter_ns()
    assert response.status_code == 200
    assert len(arrivals) == seen + 1
    return (arrivals[seen] - started) / 1e6, (ended - arrivals[seen]) / 1e6


async def local_client_ms(upstream: str, count: int) -> list[float]:
    """The agent's client to opencode (`LocalClient`), kept alive, from this process."""
    client, times = LocalClient(upstream), []
    try:
        for _ in range(count):
            started = time.perf_counter()
            response = await client.request("GET", "/small", [])
            body, done = await response.buffered()
            if not done:
                async for chunk in response.chunks():
                    body += chunk
            response.aclose_now()
            assert response.status == 200
            assert body
            times.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return times


async def sse_delays(client: httpx.AsyncClient, count: int) -> list[float]:
    """Seconds from the upstream writing each event to this process reading it."""
    delays = []
    async with client.stream("GET", f"/clock?count={count}&every=0.01") as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                delays.append((time.perf_counter_ns() - int(line[5:])) / 1e9)
    return delays


# -- the setup ----------------------------------------------------------------------------------


async def sign_up(server: str) -> tuple[httpx.AsyncClient, str]:
    owner = httpx.AsyncClient(base_url=server, headers={"Origin": server}, timeout=60)
    response = await owner.post(
        "/api/auth/register", json={"username": "bench", "password": "correct-horse"}
    )
    assert response.status_code == 201, response.text
    workspace = (await owner.post("/api/workspaces", json={"name": "bench"})).json()
    return owner, workspace["id"]


async def new_code(owner: httpx.AsyncClient, workspace_id: str) -> str:
    response = await owner.post(f"/api/workspaces/{workspace_id}/agent-code")
    assert response.status_code == 201, response.text
    return str(response.json()["code"])


async def browser(
    server: str, port: int, owner: httpx.AsyncClient, sandbox_id: str
) -> httpx.AsyncClient:
    """A client on the sandbox's subdomain with a cookie from the ticket flow."""
    host = f"oc-{sandbox_id}.localhost:{port}"
    async with httpx.AsyncClient(base_url=server, headers={"Host": host}) as sub:
        cookie = await sandbox_cookie(owner, sub, sandbox_id)
    return httpx.AsyncClient(
        base_url=server,
        timeout=httpx.Timeout(120, read=None),
        headers={"Host": host, "Cookie": f"agentserver_sandbox={cookie}"},
    )


async def idle_tunnels(
    server: str, port: int, owner: httpx.AsyncClient, workspace_id: str, server_pid: int, count: int
) -> tuple[int, int]:
    """Server RSS (KiB) before and after `count` idle tunnels connected."""
    credentials = []
    async with httpx.AsyncClient(base_url=server, timeout=60) as agent:
        for i in range(count):
            code = await new_code(owner, workspace_id)
            name = f"idle-{i}"  # sandbox names are unique in a workspace
            body = (
                await agent.post("/api/agent/register", json={"code": code, "name": name})
            ).json()
            credentials.append((body["sandboxId"], body["tunnelToken"]))
    before = rss_kib(server_pid)
    connected = 0
    all_up = trio.Event()
    dialing = trio.Semaphore(50)  # connect 50 at a time; the rest wait their turn

    async def one(sandbox_id: str, token: str) -> None:
        nonlocal connected
        await dialing.acquire()
        released = False
        try:
            async with (
                trio_websocket.open_websocket_url(
                    f"ws://127.0.0.1:{port}/api/tunnel/{sandbox_id}",
                    extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                ) as ws,
                open_tunnel(WebSocketLink(ws), role=Role.CLIENT),
            ):
                dialing.release()
                released = True
                connected += 1
                if connected == count:
                    all_up.set()
                await trio.sleep_forever()
        finally:
            if not released:
                dialing.release()

    async with trio.open_nursery() as nursery:
        for sandbox_id, token in credentials:
            nursery.start_soon(one, sandbox_id, token)
        with trio.fail_after(600):
            await all_up.wait()
            # every session registered and wrote its status: all sandboxes say running
            while True:
                listed = (await owner.get(f"/api/workspaces/{workspace_id}/sandboxes")).json()
                items = listed if isinstance(listed, list) else listed.get("sandboxes", [])
                up = [s for s in items if s["name"][:5] == "idle-" and s["status"] == "running"]
                if len(up) >= count:
                    break
                await trio.sleep(0.5)
        after = rss_kib(server_pid)
        nursery.cancel_scope.cancel()
    return before, after


async def measure(args: argparse.Namespace, work: Path) -> None:
    forwarders: list[trio.Process] = []
    async with trio.open_nursery() as nursery:
        up: BulkUpstream = await nursery.start(serve_bulk, BulkUpstream(arrivals=[]))
        upstream = f"http://127.0.0.1:{up.port}"
        server_proc, line = await spawn(
            [
                PYTHON,
                "-m",
                "agentserver.cli",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(work / "data"),
                "--idle-timeout",
                "0",
            ],
            "listening on",
            env={"AGENTSERVER_LOG_LEVEL": "WARNING"},
        )
        nursery.start_soon(drain, server_proc)
        server = line.rsplit(" ", 1)[1].strip().replace("localhost", "127.0.0.1")
        port = int(server.rsplit(":", 1)[1])
        owner, workspace_id = await sign_up(server)
        agent_proc, _ = await spawn(
            [
                PYTHON,
                "-m",
                "agentserver.cli",
                "agent",
                "connect",
                "--server",
                server,
                "--code",
                await new_code(owner, workspace_id),
                "--config",
                str(work / "agent.json"),
                "--opencode-url",
                upstream,
                "--name",
                "bench",
            ],
            "connected:",
        )
        nursery.start_soon(drain, agent_proc)
        sandbox_id = (work / "agent.json").read_text().split('"sandboxId": "')[1].split('"')[0]
        tunnel = await browser(server, port, owner, sandbox_id)
        target = up.port
        for _ in range(2):  # the floor: upstream ← forwarder ← forwarder ← this process
            forwarder, line = await spawn(
                [PYTHON, str(REPO / "bench" / "bare_forwarder.py"), str(target)], "listening on"
            )
            nursery.start_soon(drain, forwarder)
            forwarders.append(forwarder)
            target = int(line.rsplit(" ", 1)[1])
        floor_client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{target}", timeout=httpx.Timeout(120, read=None)
        )
        direct = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(120, read=None))
        results: dict[str, tuple[list[float], list[float]]] = {}

        def add(name: str, d: float | list[float], t: float | list[float]) -> None:
            ds, ts = results.setdefault(name, ([], []))
            ds.extend(d if isinstance(d, list) else [d])
            ts.extend(t if isinstance(t, list) else [t])

        floor: dict[str, list[float]] = {}
        for _ in range(30):  # warm up all three paths
            await small(direct)
            await small(tunnel)
            await small(floor_client)
        size = args.megabytes * MB
        cpu: dict[str, list[float]] = {}
        pids = {"server": server_proc.pid, "agent": agent_proc.pid}
        for round_ in range(args.rounds):
            for name, probe in (("download MB/s", download), ("upload MB/s", upload)):
                d = await probe(direct, size)
                spent = {k: cpu_seconds(p) for k, p in pids.items()}
                t = await probe(tunnel, size)
                for k, p in pids.items():
                    cpu.setdefault(f"{name.split()[0]} {k}", []).append(
                        (cpu_seconds(p) - spent[k]) / (size / MB) * 100
                    )
                add(name, d, t)
                # Each round on its own line: on a shared machine the spread matters.
                print(
                    f"round {round_ + 1} {name:<14} direct {d:7.1f} tunnel {t:7.1f} = {t / d:.2f}x"
                )
            assert up.arrivals is not None
            spent = {k: cpu_seconds(p) for k, p in pids.items()}
            for _ in range(100):
                d_in, d_out = await small_legs(direct, up.arrivals)
                t_in, t_out = await small_legs(tunnel, up.arrivals)
                add("small request ms", d_in + d_out, t_in + t_out)
                floor.setdefault("small request ms", []).append(await small(floor_client) * 1000)
                add("  way there ms", d_in, t_in)
                add("  way back ms", d_out, t_out)
            for k, p in pids.items():
                cpu.setdefault(f"small {k}", []).append((cpu_seconds(p) - spent[k]) / 100 * 1e6)
            spent = {k: cpu_seconds(p) for k, p in pids.items()}
            d = [x * 1000 for x in await sse_delays(direct, 100)]
            t = [x * 1000 for x in await sse_delays(tunnel, 100)]
            for k, p in pids.items():
                cpu.setdefault(f"sse {k}", []).append((cpu_seconds(p) - spent[k]) / 100 * 1e6)
            add("SSE event delay ms", d, t)
            floor.setdefault("SSE event delay ms", []).extend(
                x * 1000 for x in await sse_delays(floor_client, 100)
            )
            add("agent client ms", await local_client_ms(upstream, 100), [])
            for name in ("small request ms", "SSE event delay ms"):
                ds, ts = results[name]
                dm, tm = statistics.median(ds[-100:]), statistics.median(ts[-100:])
                print(
                    f"round {round_ + 1} {name:<19} direct {dm:6.3f} tunnel {tm:6.3f} "
                    f"= +{tm - dm:.3f} ms"
                )
        await tunnel.aclose()
        await direct.aclose()
        await floor_client.aclose()
        for forwarder in forwarders:
            forwarder.terminate()
        report(results, args, cpu, floor)
        before, after = await idle_tunnels(
            server, port, owner, workspace_id, server_proc.pid, args.tunnels
        )
        per = (after - before) / args.tunnels
        print(
            f"\nidle tunnels: {args.tunnels} connected; server RSS {before / 1024:.0f} MiB → "
            f"{after / 1024:.0f} MiB = {per:.1f} KiB per idle tunnel "
            f"(target ≤ 100 KiB: {'met' if per <= 100 else 'NOT met'})"
        )
        await owner.aclose()
        for proc in (agent_proc, server_proc):
            proc.terminate()
        with trio.move_on_after(30):
            await agent_proc.wait()
            await server_proc.wait()
        nursery.cancel_scope.cancel()


def report(
    results: dict[str, tuple[list[float], list[float]]],
    args: argparse.Namespace,
    cpu: dict[str, list[float]],
    floor: dict[str, list[float]],
) -> None:
    print(
        f"\nLocal agent tunnel vs direct to the same upstream ({args.rounds} rounds, "
        f"{args.megabytes} MB bodies; medians)"
    )
    header = f"{'metric':<22}{'direct':>12}{'tunnel':>12}{'tunnel/direct':>15}{'added':>10}"
    print(header)
    print("-" * len(header))
    medians = {}
    for name, (direct, tunnel) in results.items():
        if not tunnel:
            continue
        d, t = statistics.median(direct), statistics.median(tunnel)
        medians[name] = (d, t)
        added = "" if "MB/s" in name else f"{t - d:.2f}"
        print(f"{name:<22}{d:>12.2f}{t:>12.2f}{t / d:>14.2f}x{added:>10}")
    print("\nBreakdown (medians):")
    print(
        "  CPU per small request: "
        + ", ".join(f"{k} {statistics.median(cpu[f'small {k}']):.0f} µs" for k in PROCESSES)
    )
    print(
        "  CPU per SSE event:     "
        + ", ".join(f"{k} {statistics.median(cpu[f'sse {k}']):.0f} µs" for k in PROCESSES)
    )
    print(
        "  CPU seconds per 100 MB: "
        + "; ".join(
            f"{way} "
            + ", ".join(f"{k} {statistics.median(cpu[f'{way} {k}']):.2f}" for k in PROCESSES)
            for way in ("download", "upload")
        )
    )
    direct_ms = statistics.median(results["small request ms"][0])
    agent_ms = statistics.median(results["agent client ms"][0])
    print(
        f"  the agent's client to opencode, small GET: {agent_ms:.3f} ms "
        f"(this process's httpx, the direct column: {direct_ms:.3f} ms)"
    )
    print(
        "  the floor, two bare trio forwarders instead of server and agent: "
        + "; ".join(
            f"{name.removesuffix(' ms')} +{statistics.median(floor[name]) - medians[name][0]:.2f}"
            f" ms (the tunnel adds +{medians[name][1] - statistics.median(floor[name]):.2f} ms"
            " over it)"
            for name in ("small request ms", "SSE event delay ms")
        )
    )
    targets = (
        (
            "small request added",
            medians["small request ms"],
            lambda d, t: t - d <= 1.0,
            "≤ +1.0 ms",
        ),
        ("SSE event added", medians["SSE event delay ms"], lambda d, t: t - d <= 0.5, "≤ +0.5 ms"),
        ("download", medians["download MB/s"], lambda d, t: t / d >= 0.5, "≥ 0.5x direct"),
        ("upload", medians["upload MB/s"], lambda d, t: t / d >= 0.5, "≥ 0.5x direct"),
    )
    print(
        "targets: "
        + "; ".join(
            f"{name} {goal}: {'met' if ok(*pair) else 'NOT met'}"
            for name, pair, ok, goal in targets
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--tunnels", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="agentserver-bench-tunnel-", dir="/tmp"))
    try:
        trio.run(measure, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
