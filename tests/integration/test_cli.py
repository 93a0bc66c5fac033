"""The `agentserver` command run for real: version, help, bad values, serve, restart, migrate."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from agentserver import __version__
from agentserver.settings import OPTIONS

BIN = Path(sys.executable).parent / "agentserver"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} is not installed (uv sync)")
LISTENING = re.compile(rb"listening on http://[^:/]+:(\d+)")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment without any agentserver variables from the caller, plus `extra`."""
    names = {o.env for o in OPTIONS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(COLUMNS="250", **extra)
    return env


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(**env),
        check=False,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 2, stderr exactly one line naming one of `names`, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert any(name in lines[0] for name in names), lines[0]
    return lines[0]


def test_version() -> None:
    """`agentserver --version` prints the package version and succeeds."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_serve_help_documents_every_option() -> None:
    """`serve --help` names every flag with its environment variable, and the negative bool flag."""
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = result.stdout
    for option in OPTIONS:
        assert option.flag in text, option.flag
        assert option.env in text, option.env
    assert "--no-allow-registration" in text
    assert "default 30m" in text


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (("--idle-timeout", "soon"), {}, ("--idle-timeout",)),
        ((), {"IDLE_TIMEOUT": "5 minutes"}, ("IDLE_TIMEOUT",)),
        (("--listen", "nowhere"), {}, ("--listen",)),
        (("--backend", "vm"), {}, ("--backend",)),
        (("--max-body", "huge"), {}, ("--max-body",)),
        (("--listen", "127.0.0.1:0", "--data-dir", "/proc/agentserver-nope"), {}, ("--data-dir",)),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    args: tuple[str, ...], env: dict[str, str], names: tuple[str, ...]
) -> None:
    """An unparsable value prints one line naming the option or variable and exits 2."""
    assert_one_clear_line(run_cli("serve", *args, **env), *names)


def test_port_in_use_names_listen() -> None:
    """A busy port exits 2 with one line naming --listen."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = assert_one_clear_line(
            run_cli(
                "serve", "--listen", f"127.0.0.1:{port}", "--db-url", "postgresql://x@127.0.0.1:1/x"
            ),
            "--listen",
        )
        assert "already in use" in line


def test_unreachable_database_names_db_url_and_hides_the_password() -> None:
    """A database that does not answer exits 2 naming --db-url/DATABASE_URL, password not shown."""
    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://agent:hunter2-secret@127.0.0.1:{port}/agentserver"
    line = assert_one_clear_line(
        run_cli("serve", "--listen", "127.0.0.1:0", "--db-url", url), "--db-url", "DATABASE_URL"
    )
    assert "hunter2-secret" not in line
    env_line = assert_one_clear_line(
        run_cli("serve", "--listen", "127.0.0.1:0", DATABASE_URL=url), "DATABASE_URL"
    )
    assert "hunter2-secret" not in env_line


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory under /tmp (the embedded PostgreSQL runs as another user when root)."""
    path = Path(tempfile.mkdtemp(prefix="agentserver-cli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def processes_using(path: Path) -> list[int]:
    """Pids whose command line mentions `path` (the embedded postgres and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(int(entry.name))
    return found


async def serve_until_listening(
    data_dir: Path, listen: str = "127.0.0.1:0"
) -> tuple[trio.Process, int]:
    """Start `serve` with the embedded database; return the process and its port once listening."""
    proc, port, _ = await serve_until_summary(data_dir, listen)
    return proc, port


async def serve_until_summary(data_dir: Path, listen: str) -> tuple[trio.Process, int, str]:
    """Start `serve`; return the process, its port and the start-up summary once printed."""
    proc = await trio.lowlevel.open_process(
        [str(BIN), "serve", "--listen", listen, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    assert proc.stdout is not None
    seen = b""
    with trio.fail_after(120):
        # The summary is one write; its Anthropic line is there whatever else is.
        while not ((match := LISTENING.search(seen)) and b"Anthropic:" in seen):
            chunk = await proc.stdout.receive_some()
            assert chunk, f"serve exited before listening (status {proc.poll()}): {seen!r}"
            seen += chunk
    assert seen.count(b"listening") == 1
    return proc, int(match.group(1)), seen.decode()


async def stop(proc: trio.Process, signum: signal.Signals) -> int:
    """Send `signum` and wait; the server must be gone within 10 s."""
    proc.send_signal(signum)
    with trio.fail_after(10):
        return await proc.wait()


async def test_serve_embedded_stops_cleanly_and_keeps_data(data_dir: Path) -> None:
    """Embedded-DB serve answers, stops on SIGTERM/SIGINT leaving no process, and keeps users."""
    proc, port = await serve_until_listening(data_dir)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            registered = await client.post(
                "/api/auth/register", json={"username": "alice", "password": "correct-horse"}
            )
            assert registered.status_code == 201
        assert processes_using(data_dir), "the embedded PostgreSQL should be running"
        assert await stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    assert processes_using(data_dir) == []

    proc, port = await serve_until_listening(data_dir)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            login = await client.post(
                "/api/auth/login", json={"username": "alice", "password": "correct-horse"}
            )
            assert login.status_code == 200
            assert login.json()["user"]["role"] == "admin"
        assert await stop(proc, signal.SIGINT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    assert processes_using(data_dir) == []

    migrated = await trio.to_thread.run_sync(
        lambda: run_cli("db", "migrate", "--data-dir", str(data_dir))
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0 migration(s)" in migrated.stdout
    assert processes_using(data_dir) == []


async def test_serve_after_a_crash_stops_the_postgresql_it_found_running(data_dir: Path) -> None:
    """A server killed outright leaves its PostgreSQL running; the next server on that data
    directory adopts it and stops it on exit, leaving no process behind."""
    crashed, _ = await serve_until_listening(data_dir)
    crashed.kill()
    with trio.fail_after(10):
        await crashed.wait()
    assert processes_using(data_dir), "PostgreSQL outlives a killed server"
    proc, port = await serve_until_listening(data_dir)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/readyz")).status_code == 200
        assert await stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    assert processes_using(data_dir) == []


def test_db_migrate_with_a_url(db_url: str) -> None:
    """`db migrate --db-url` applies every migration once, then nothing."""
    first = run_cli("db", "migrate", "--db-url", db_url)
    assert first.returncode == 0, first.stderr
    assert re.search(r"applied [1-9]\d* migration\(s\): 0001_accounts", first.stdout)
    again = run_cli("db", "migrate", DATABASE_URL=db_url)
    assert again.returncode == 0
    assert "applied 0 migration(s)" in again.stdout


async def test_serve_summarises_and_warns_about_a_wide_listen(data_dir: Path) -> None:
    """Once ready, serve prints where data lives, the backend, the sandbox URL form and the
    missing Anthropic key, and warns that teammates would be sent to a localhost base domain."""
    proc, port, summary = await serve_until_summary(data_dir, "0.0.0.0:0")
    try:
        assert f"embedded PostgreSQL in {data_dir}" in summary
        assert "sandboxes:     process backend" in summary
        assert f"http://oc-{{id}}.localhost:{port}" in summary
        assert "prompts in sandboxes will fail" in summary
        (warning,) = [line for line in summary.splitlines() if line.startswith("warning:")]
        assert f"localhost:{port}" in warning
        assert "--base-domain" in warning
    finally:
        assert await stop(proc, signal.SIGTERM) == 0
