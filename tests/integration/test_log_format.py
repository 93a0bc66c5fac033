"""`serve --log-format json`: every line the server writes to stderr is one JSON object, and a
request's access line carries its request id and fields as data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from agentserver.settings import OPTIONS

BIN = Path(sys.executable).parent / "agentserver"
LISTENING = re.compile(rb"listening on http://[^:/]+:(\d+)")


async def test_json_lines_with_the_request_id(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {o.env for o in OPTIONS}}
    env["AGENTSERVER_LOG_FORMAT"] = "json"
    with (tmp_path / "stderr").open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [str(BIN), "serve", "--listen", "127.0.0.1:0", "--db-url", db_url],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env | {"AGENTSERVER_DATA_DIR": str(tmp_path / "data")},
        )
        try:
            assert proc.stdout is not None
            seen = b""
            with trio.fail_after(60):
                while not (match := LISTENING.search(seen)):
                    chunk = await proc.stdout.receive_some()
                    assert chunk, f"serve exited (status {proc.poll()}): {seen!r}"
                    seen += chunk
            base_url = f"http://127.0.0.1:{match.group(1).decode()}"
            async with httpx.AsyncClient(base_url=base_url) as client:
                answer = await client.get("/api/nope", headers={"X-Request-Id": "trace-42"})
            assert answer.status_code == 404
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
    lines = (tmp_path / "stderr").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses
    assert entries
    access = [e for e in entries if e.get("request_id") == "trace-42"]
    assert len(access) == 1, lines
    assert access[0]["logger"] == "agentserver.http"
    fields = (access[0]["method"], access[0]["path"], access[0]["status"])
    assert fields == ("GET", "/api/nope", 404)
    assert isinstance(access[0]["duration_ms"], float)
